//! Generates the gRPC clients (no servers: the daemon only calls the store)
//! from `protos/` with protox, a pure-Rust protobuf compiler, so that no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "protos/tvix/castore/protos/castore.proto",
        "protos/tvix/castore/protos/rpc_blobstore.proto",
        "protos/tvix/castore/protos/rpc_directory.proto",
        "protos/tvix/store/protos/pathinfo.proto",
        "protos/tvix/store/protos/rpc_pathinfo.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["protos"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
