fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/ack.proto");
    prost_build::compile_protos(&["proto/ack.proto"], &["proto/"])
}
