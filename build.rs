fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/ack.proto");
    println!("cargo:rerun-if-changed=proto/transfer.proto");
    prost_build::compile_protos(&["proto/ack.proto"], &["proto/"])?;
    // The transfer protocol's answers carry the wire protocol's `Ack`.
    prost_build::Config::new()
        .extern_path(".bb_libp2p.wire.v1", "crate::codec::proto")
        .compile_protos(&["proto/transfer.proto"], &["proto/"])
}
