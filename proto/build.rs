//! Compiles `proto/blockwatch/v1/*.proto` with protox (pure Rust, no system `protoc`) and
//! generates the prost messages, plus the tonic client and server with the `grpc` feature.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/blockwatch/v1/result.proto", "proto/blockwatch/v1/fleet.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    #[cfg(feature = "grpc")]
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    #[cfg(not(feature = "grpc"))]
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
