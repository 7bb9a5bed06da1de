//! The emulator's request parsing and handling: any method, path, query,
//! headers and body, authenticated or not, gets an HTTP answer (never a
//! panic, never a 5xx other than the faults Key Vault itself documents), and
//! every error answer is Key Vault's JSON error body.
#![no_main]

use std::sync::LazyLock;

use keyvault_emulator::DEV_TOKEN;
use keyvault_emulator::fuzzing::FuzzVault;
use libfuzzer_sys::fuzz_target;

struct Harness {
    runtime: tokio::runtime::Runtime,
    vault: FuzzVault,
    _state: tempfile::TempDir,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // tmpfs: the emulator fsyncs every change.
    let state = tempfile::Builder::new().prefix("keyseal-fuzz-").tempdir_in("/dev/shm").expect("state dir");
    let vault = runtime.block_on(FuzzVault::open(state.path())).expect("emulator state");
    // One key to operate on, so wrap, unwrap, get and update are reached.
    let create = br#"{"kty":"RSA","key_size":2048}"#.to_vec();
    let auth = format!("Bearer {DEV_TOKEN}");
    let headers = [("authorization", auth.as_bytes()), ("content-type", b"application/json".as_slice())];
    runtime.block_on(vault.request(b"POST", "/keys/fuzz/create?api-version=7.5", &headers, create)).expect("created");
    Harness { runtime, vault, _state: state }
});

#[derive(arbitrary::Arbitrary, Debug)]
enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Other(Vec<u8>),
}

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    verb: Verb,
    /// Path segments; joined with `/` after a leading one.
    segments: Vec<String>,
    query: String,
    authenticated: bool,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let harness = &*HARNESS;
    let method: &[u8] = match &input.verb {
        Verb::Get => b"GET",
        Verb::Post => b"POST",
        Verb::Put => b"PUT",
        Verb::Patch => b"PATCH",
        Verb::Delete => b"DELETE",
        Verb::Other(raw) => raw,
    };
    // Creating RSA keys costs tens of milliseconds; keep the fuzzer on
    // parsing by not letting it mint keys by the thousand.
    let creates = input.segments.iter().any(|s| {
        let s = s.to_ascii_lowercase();
        s == "create" || s == "rotate" || s == "restore"
    }) || (method.eq_ignore_ascii_case(b"PUT") && input.segments.len() == 2);
    if creates {
        return;
    }
    let path_and_query = format!("/{}?{}", input.segments.join("/"), input.query);
    let auth = format!("Bearer {DEV_TOKEN}");
    let mut headers: Vec<(&str, &[u8])> = input.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    if input.authenticated {
        headers.push(("authorization", auth.as_bytes()));
    }
    let Some((status, body)) =
        harness.runtime.block_on(harness.vault.request(method, &path_and_query, &headers, input.body))
    else {
        return;
    };
    assert!(status < 500, "{method:?} {path_and_query} answered {status}");
    if status >= 400 && !body.is_empty() {
        let error: serde_json::Value = serde_json::from_slice(&body).expect("error bodies are JSON");
        assert!(error["error"]["code"].is_string(), "{}", String::from_utf8_lossy(&body));
    }
});
