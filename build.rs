//! Generates the protobuf types with a pure-Rust compiler (protox), so
//! building keyseal never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files =
        ["proto/keyseal/v1/ingest.proto", "proto/keyseal/v1/events.proto", "proto/keyseal/store/v1/store.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // Sorted maps encode deterministically, so equal records encode equal.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
