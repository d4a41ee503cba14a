//! Compiles `hlsfarm/v1/*.proto` with protox (a pure-Rust protobuf compiler), so the build
//! needs no system `protoc`, then generates prost messages and tonic services from it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["hlsfarm/v1/types.proto", "hlsfarm/v1/service.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
