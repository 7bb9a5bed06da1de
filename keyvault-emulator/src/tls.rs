//! HTTPS for the emulator. The Azure SDKs refuse to send a bearer token over
//! plain HTTP, so the emulator serves TLS with a self-signed certificate
//! made on first start (SANs `localhost`, `127.0.0.1`, `::1`, plus any
//! `--tls-name`, e.g. a compose service name) and kept in the state
//! directory, so clients that trust `<state-dir>/cert.pem` keep trusting it
//! across restarts. It is made anew only when a requested name is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use zeroize::Zeroizing;

use super::error::EmulatorError;
use super::store::{PRIVATE_MODE, write_atomically};

const CERT_FILE: &str = "cert.pem";
const CERT_KEY_FILE: &str = "cert-key.pem";
/// The names the stored certificate covers, one per line.
const CERT_NAMES_FILE: &str = "cert-names";
const CERT_MODE: u32 = 0o644;
const SUBJECT_ALT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// A client that has not finished its handshake by then is dropped, so it
/// cannot hold a connection slot forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Where the certificate clients must trust lives.
pub(crate) fn cert_pem_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CERT_FILE)
}

/// The rustls configuration serving the state directory's certificate,
/// created on first use.
pub(crate) fn server_config(state_dir: &Path, extra_names: &[String]) -> Result<Arc<ServerConfig>, EmulatorError> {
    install_crypto_provider();
    let mut names: Vec<String> = SUBJECT_ALT_NAMES.iter().map(|n| n.to_string()).collect();
    names.extend(extra_names.iter().filter(|n| !names.contains(n)).cloned().collect::<Vec<_>>());
    let (cert_pem, key_pem) = load_or_create_certificate(state_dir, &names)?;
    let corrupt = |file: &str, reason: String| EmulatorError::CorruptState { path: state_dir.join(file), reason };
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| corrupt(CERT_FILE, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| corrupt(CERT_KEY_FILE, e.to_string()))?;
    let mut config = ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key)?;
    // The server speaks HTTP/1.1 only; saying so keeps clients from trying h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Two TLS providers are compiled into this binary (ring via reqwest,
/// aws-lc-rs via lapin), so rustls cannot choose one by itself. Install
/// aws-lc-rs as the process default unless something already did; calling
/// this again, or from another component, is harmless.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed a provider in between,
        // which is just as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// Reads the certificate and its key, or makes and stores both. The key is
/// written first, so a certificate on disk always has its key.
fn load_or_create_certificate(
    state_dir: &Path,
    names: &[String],
) -> Result<(String, Zeroizing<String>), EmulatorError> {
    let cert_path = cert_pem_path(state_dir);
    let key_path = state_dir.join(CERT_KEY_FILE);
    let names_path = state_dir.join(CERT_NAMES_FILE);
    // A certificate from before names were recorded covers the defaults.
    let covered = read_if_exists(&names_path)?.map_or_else(
        || SUBJECT_ALT_NAMES.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        |text| text.lines().map(str::to_owned).collect(),
    );
    if let (Some(cert), Some(key)) = (read_if_exists(&cert_path)?, read_if_exists(&key_path)?) {
        if names.iter().all(|n| covered.contains(n)) {
            return Ok((cert, Zeroizing::new(key)));
        }
    }
    let generation = |e: rcgen::Error| EmulatorError::Certificate(e.to_string());
    let key_pair = rcgen::KeyPair::generate().map_err(generation)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(generation)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "keyseal Key Vault emulator");
    // A leaf, not a CA: webpki refuses a CA certificate as the server's own.
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.self_signed(&key_pair).map_err(generation)?;

    let key_pem = Zeroizing::new(key_pair.serialize_pem());
    let cert_pem = cert.pem();
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EmulatorError::StateIo { path, source }
    };
    write_atomically(&key_path, key_pem.as_bytes(), PRIVATE_MODE).map_err(io_error(&key_path))?;
    write_atomically(&cert_path, cert_pem.as_bytes(), CERT_MODE).map_err(io_error(&cert_path))?;
    write_atomically(&names_path, names.join("\n").as_bytes(), CERT_MODE).map_err(io_error(&names_path))?;
    tracing::info!(cert = %cert_path.display(), "generated the key vault emulator's TLS certificate");
    Ok((cert_pem, key_pem))
}

fn read_if_exists(path: &Path) -> Result<Option<String>, EmulatorError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EmulatorError::StateIo { path: path.to_path_buf(), source }),
    }
}

/// A TCP listener that hands out connections once their TLS handshake has
/// finished. Handshakes run concurrently, so a slow or silent client never
/// delays the others.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    local_addr: SocketAddr,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    /// Binds `addr`; handshakes use `config`.
    pub(crate) async fn bind(addr: SocketAddr, config: Arc<ServerConfig>) -> Result<Self, EmulatorError> {
        let bind_error = |source| EmulatorError::Bind { addr, source };
        let tcp = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = tcp.local_addr().map_err(bind_error)?;
        Ok(Self { tcp, local_addr, acceptor: TlsAcceptor::from(config), handshakes: JoinSet::new() })
    }

    /// The bound address, with the real port when port 0 was asked for.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some((tls, peer)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake with the key vault emulator failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake with the key vault emulator timed out");
            None
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Best effort: small request/response pairs want no Nagle delay.
                        let _ = stream.set_nodelay(true);
                        self.handshakes.spawn(handshake(self.acceptor.clone(), stream, peer));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "key vault emulator could not accept a connection");
                        tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    }
                },
                Some(finished) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = finished {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
