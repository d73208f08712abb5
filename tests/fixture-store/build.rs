//! Generates the gRPC servers (and messages) the fixture store serves from
//! the repository's `protos/`, with protox, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../../protos";
    let files = [
        "tvix/castore/protos/castore.proto",
        "tvix/castore/protos/rpc_blobstore.proto",
        "tvix/castore/protos/rpc_directory.proto",
        "tvix/store/protos/pathinfo.proto",
        "tvix/store/protos/rpc_pathinfo.proto",
    ]
    .map(|f| format!("{root}/{f}"));
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(&files, [root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
