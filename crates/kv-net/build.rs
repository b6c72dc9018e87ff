//! Compiles `proto/*.proto` with the pure-Rust protobuf parser (no `protoc`).

use protobuf_codegen::{Codegen, Customize};

fn main() {
    let proto_dir = "../../proto";
    println!("cargo:rerun-if-changed={proto_dir}/flashkv.proto");
    Codegen::new()
        .pure()
        .includes([proto_dir])
        .input(format!("{proto_dir}/flashkv.proto"))
        // `bytes` fields become `bytes::Bytes`, sliced from the received frame
        // without copying.
        .customize(Customize::default().tokio_bytes(true))
        .cargo_out_dir("proto")
        .run_from_script();
}
