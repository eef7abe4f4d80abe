//! Compiles the `.proto` files with protox (pure Rust), so no system
//! `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/snix/castore/v1/castore.proto",
        "proto/snix/store/v1/pathinfo.proto",
        "proto/lazix/v1/lazix.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
