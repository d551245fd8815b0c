//! Generates the message types and the client/server stubs of `proto/buildman.proto`.
//! The output goes to OUT_DIR and is not committed (STYLE 2.10).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/buildman.proto");
    tonic_prost_build::configure().compile_protos(&["proto/buildman.proto"], &["proto"])?;
    Ok(())
}
