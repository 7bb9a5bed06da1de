//! Whether an AMQP 0-9-1 broker answers at an address: an open port is not
//! enough (RabbitMQ's Erlang VM can hold a port while its app is stopped,
//! and another program can hold it), so the probe speaks the first step of
//! the protocol.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// What a client sends first (AMQP 0-9-1, section 4.2.2).
const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// Whether an AMQP 0-9-1 broker answers at `host:port`: it accepts a TCP
/// connection and replies to the protocol header with a method frame on
/// channel 0 carrying `connection.start`, the broker's first frame. Each
/// step (connect, write, read) may take up to `timeout`, for each address
/// `host` resolves to; the connection is then dropped. A zero `timeout`
/// never answers.
pub fn answers(host: &str, port: u16, timeout: Duration) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else { return false };
    addrs.into_iter().any(|addr| answers_at(&addr, timeout).unwrap_or(false))
}

fn answers_at(addr: &SocketAddr, timeout: Duration) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(PROTOCOL_HEADER)?;
    let mut start = [0u8; 11];
    stream.read_exact(&mut start)?;
    Ok(is_connection_start(&start))
}

/// A frame header (type 1 = METHOD, channel 0, 4 bytes of size) followed by
/// class 10 (connection), method 10 (start).
pub(crate) fn is_connection_start(start: &[u8; 11]) -> bool {
    start[0] == 1 && start[1..3] == [0, 0] && start[7..11] == [0, 10, 0, 10]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// The start of RabbitMQ's connection.start frame.
    const CONNECTION_START: [u8; 13] = [1, 0, 0, 0, 0, 1, 0xf4, 0, 10, 0, 10, 0, 9];

    /// A one-connection server on a free port that reads what the client
    /// sends first and replies with `reply`.
    fn server(reply: &'static [u8]) -> (u16, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut got = [0u8; 8];
            stream.read_exact(&mut got).unwrap();
            let _ = stream.write_all(reply);
            got.to_vec()
        });
        (port, handle)
    }

    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn a_broker_that_sends_connection_start_answers() {
        let (port, server) = server(&CONNECTION_START);
        assert!(answers("127.0.0.1", port, Duration::from_secs(5)));
        assert_eq!(server.join().unwrap(), PROTOCOL_HEADER, "the client sends the AMQP 0-9-1 header");
    }

    #[test]
    fn a_name_that_resolves_to_the_broker_answers() {
        let (port, server) = server(&CONNECTION_START);
        // localhost may resolve to ::1 first, where nothing listens.
        assert!(answers("localhost", port, Duration::from_secs(5)));
        server.join().unwrap();
    }

    #[test]
    fn a_closed_port_does_not_answer() {
        assert!(!answers("127.0.0.1", closed_port(), Duration::from_secs(1)));
    }

    #[test]
    fn a_server_that_speaks_something_else_does_not_answer() {
        let (port, server) = server(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert!(!answers("127.0.0.1", port, Duration::from_secs(5)));
        server.join().unwrap();
    }

    #[test]
    fn a_broker_of_another_protocol_version_does_not_answer() {
        // A broker that does not speak 0-9-1 replies with the header it does speak.
        let (port, server) = server(b"AMQP\x00\x01\x00\x00\x00\x00\x00");
        assert!(!answers("127.0.0.1", port, Duration::from_secs(5)));
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_says_nothing_does_not_answer_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = std::time::Instant::now();
        assert!(!answers("127.0.0.1", port, Duration::from_millis(300)));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        drop(listener);
    }

    #[test]
    fn an_unresolvable_host_or_a_zero_timeout_does_not_answer() {
        assert!(!answers("no-such-host.invalid", 5672, Duration::from_secs(1)));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!answers("127.0.0.1", listener.local_addr().unwrap().port(), Duration::ZERO));
    }

    #[test]
    fn only_a_method_frame_on_channel_0_with_connection_start_counts() {
        let good: [u8; 11] = CONNECTION_START[..11].try_into().unwrap();
        assert!(is_connection_start(&good));
        for (at, value) in [(0, 8), (2, 1), (8, 20), (10, 11)] {
            let mut bad = good;
            bad[at] = value;
            assert!(!is_connection_start(&bad), "byte {at} = {value}");
        }
    }
}
