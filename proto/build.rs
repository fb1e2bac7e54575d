//! Compiles `proto/*.proto` with protox (pure Rust; no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/admin.proto", "proto/peer.proto", "proto/raft.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Blob chunks stay `Bytes`: no copy of the payload into a `Vec`.
        .bytes(".berth.peer.v1.BlobChunk.data")
        .compile_fds(fds)?;
    Ok(())
}
