fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/vmcheck/target/v1/target.proto"], &["proto"])?;
    Ok(())
}
