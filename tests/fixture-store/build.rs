//! Generates the gRPC servers the fixture store serves from the
//! repository's `protos/`, with protox, so no system `protoc` is needed.
//! The messages are the daemon's own (`tvix_virtiofsd::proto`): one copy
//! of them, and the fixture cannot drift from what the daemon decodes.

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
        .extern_path(".tvix.castore.v1", "::tvix_virtiofsd::proto::castore")
        .extern_path(".tvix.store.v1", "::tvix_virtiofsd::proto::store")
        .compile_fds(descriptors)?;
    Ok(())
}
