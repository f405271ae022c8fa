//! Helpers shared by the test binaries that drive the `preloaded-base` example.

use std::path::{Path, PathBuf};

/// The `preloaded-base` example beside this test binary (`target/<profile>/deps/<test>` ->
/// `target/<profile>/examples/preloaded-base`), which `cargo test -p forkserver-proto` builds.
pub fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/preloaded-base");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p forkserver-proto --examples` \
         (plain `cargo test -p forkserver-proto` builds it too)",
        bin.display()
    );
    bin
}
