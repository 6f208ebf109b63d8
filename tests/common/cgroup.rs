//! A fresh cgroup per test on the host's controller-less cgroup2 tree.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The host's cgroup2 tree without controllers (see the machine's notes).
pub const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// A fresh cgroup for one test, removed (with anything left in it) at the end.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let path =
            Path::new(UNIFIED).join(format!("julia-fcgi-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| {
            panic!(
                "cannot create {} ({e}); the host tests need root and a cgroup2 mount there",
                path.display()
            )
        });
        TestCgroup(path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if dir.path().is_dir() {
                let _ = std::fs::write(dir.path().join("cgroup.kill"), "1");
                for _ in 0..100 {
                    if std::fs::remove_dir(dir.path()).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}
