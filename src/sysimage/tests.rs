//! Discovery and refusal, on metadata written here (building a real image
//! is `tests/sysimage.rs`'s job).

use super::metadata::{self, Cpu, FileStamp, Julia, Statements};
use super::*;

/// A fake julia installation, worker and image in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("julia/lib")).unwrap();
        std::fs::create_dir_all(root.join("worker/src")).unwrap();
        std::fs::write(root.join("julia/julia"), "#!/bin/sh\n").unwrap();
        std::fs::write(root.join("julia/lib/libjulia.so.1"), "lib").unwrap();
        std::fs::write(root.join("julia/lib/sys.so"), "base image").unwrap();
        std::fs::write(root.join("worker/worker.jl"), "JuliaFCGI.main()").unwrap();
        std::fs::write(root.join("worker/src/JuliaFCGI.jl"), "module JuliaFCGI end").unwrap();
        std::fs::write(root.join("sysimage.so"), "compiled").unwrap();
        let fixture = Fixture { dir };
        fixture.metadata().write(&fixture.meta_path()).unwrap();
        fixture
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn image(&self) -> PathBuf {
        self.path("sysimage.so")
    }

    fn meta_path(&self) -> PathBuf {
        metadata_path(&self.image())
    }

    fn metadata(&self) -> Metadata {
        let stamp = |rel: &str| FileStamp::of(&self.path(rel)).unwrap();
        Metadata {
            format: metadata::FORMAT,
            built_by: "test".into(),
            built_at: 0,
            build_seconds: 1.0,
            julia: Julia {
                path: self.path("julia/julia"),
                version: "1.5.3".into(),
                files: vec![
                    stamp("julia/julia"),
                    stamp("julia/lib/libjulia.so.1"),
                    stamp("julia/lib/sys.so"),
                ],
            },
            cpu: Cpu {
                target: "native".into(),
                host: metadata::host_cpu(),
            },
            base: "julia".into(),
            stdlibs: vec![],
            worker: metadata::worker_sources(&self.path("worker")).unwrap(),
            packages: vec![],
            loaded: vec![],
            project: None,
            load_path: None,
            package_files: vec![],
            statements: Statements {
                ok: 10,
                failed: 1,
                rejected: 0,
            },
            image: stamp("sysimage.so"),
        }
    }

    fn inputs(&self) -> Inputs {
        Inputs::new(
            &self.path("julia/julia"),
            &self.path("worker/worker.jl"),
            &[],
            &[],
        )
    }

    fn check(&self) -> Result<Image, Refusal> {
        Image::check(&self.image(), &self.inputs())
    }

    fn refusal(&self) -> String {
        self.check().unwrap_err().why
    }
}

#[test]
fn a_fitting_image_is_used() {
    let f = Fixture::new();
    let image = f.check().unwrap();
    assert_eq!(
        image.julia_args(),
        [OsString::from("-J"), f.image().into_os_string()]
    );
    assert!(
        image.describe().contains("julia 1.5.3"),
        "{}",
        image.describe()
    );
    let setting = Setting::Path(f.image());
    assert!(Image::discover(&setting, &f.inputs()).unwrap().is_some());
    assert_eq!(Image::discover(&Setting::Off, &f.inputs()), Ok(None));
}

#[test]
fn a_changed_worker_source_is_refused() {
    let f = Fixture::new();
    std::fs::write(
        f.path("worker/src/JuliaFCGI.jl"),
        "module JuliaFCGI; x = 1; end",
    )
    .unwrap();
    let why = f.refusal();
    assert!(
        why.contains("worker changed") && why.contains("src/JuliaFCGI.jl"),
        "{why}"
    );

    let f = Fixture::new();
    std::fs::write(f.path("worker/src/New.jl"), "module New end").unwrap();
    assert!(f.refusal().contains("src/New.jl is new"));
}

#[test]
fn another_julia_is_refused() {
    let f = Fixture::new();
    std::fs::write(f.path("other-julia"), "#!/bin/sh\n").unwrap();
    let inputs = Inputs {
        julia: f.path("other-julia"),
        ..f.inputs()
    };
    let why = Image::check(&f.image(), &inputs).unwrap_err().why;
    assert!(
        why.contains("built for julia 1.5.3") && why.contains("other-julia"),
        "{why}"
    );

    // The same path, but julia upgraded under it.
    let f = Fixture::new();
    std::fs::write(f.path("julia/lib/libjulia.so.1"), "a newer lib").unwrap();
    let why = f.refusal();
    assert!(
        why.contains("julia changed") && why.contains("libjulia.so.1"),
        "{why}"
    );
}

#[test]
fn a_replaced_image_or_other_cpu_is_refused() {
    let f = Fixture::new();
    std::fs::write(f.image(), "compiled again, without metadata").unwrap();
    assert!(f.refusal().contains("does not match its metadata"));

    let f = Fixture::new();
    let mut m = f.metadata();
    m.cpu.host = "another machine".into();
    m.write(&f.meta_path()).unwrap();
    assert!(f.refusal().contains("another CPU"));
    // A portable target runs anywhere.
    m.cpu.target = "generic".into();
    m.write(&f.meta_path()).unwrap();
    assert!(f.check().is_ok());
}

#[test]
fn packages_must_be_the_listed_ones() {
    let f = Fixture::new();
    let inputs = Inputs {
        packages: vec!["Dates".into()],
        ..f.inputs()
    };
    let why = Image::check(&f.image(), &inputs).unwrap_err().why;
    assert!(
        why.contains("holds the packages []") && why.contains("[Dates]"),
        "{why}"
    );

    // A package source that changed since the build.
    let f = Fixture::new();
    std::fs::write(f.path("Greeting.jl"), "module Greeting end").unwrap();
    let mut m = f.metadata();
    m.packages = vec!["Greeting".into()];
    m.package_files =
        vec![metadata::FileHash::of(&f.path("Greeting.jl"), &f.path("Greeting.jl")).unwrap()];
    m.write(&f.meta_path()).unwrap();
    let inputs = Inputs {
        packages: vec!["Greeting".into()],
        ..f.inputs()
    };
    assert!(Image::check(&f.image(), &inputs).is_ok());
    std::fs::write(f.path("Greeting.jl"), "module Greeting; hi() = 1; end").unwrap();
    let why = Image::check(&f.image(), &inputs).unwrap_err().why;
    assert!(
        why.contains("a package changed") && why.contains("Greeting.jl"),
        "{why}"
    );
    // And another project.
    let inputs = Inputs {
        project: Some("/srv/other".into()),
        ..inputs
    };
    assert!(Image::check(&f.image(), &inputs)
        .unwrap_err()
        .why
        .contains("/srv/other"));
}

#[test]
fn missing_or_foreign_metadata_is_refused_in_one_line() {
    let f = Fixture::new();
    std::fs::remove_file(f.meta_path()).unwrap();
    let refusal = f.check().unwrap_err();
    let line = refusal.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains("not used") && line.contains("start from source"),
        "{line}"
    );

    std::fs::write(f.meta_path(), "{\"format\": 0}").unwrap();
    assert!(f.refusal().contains("another julia-fcgi"));
}

#[test]
fn settings_parse() {
    assert_eq!(Setting::parse("auto"), Ok(Setting::Auto));
    assert_eq!(Setting::parse("off"), Ok(Setting::Off));
    assert_eq!(
        Setting::parse("/var/cache/julia-fcgi/sysimage.so"),
        Ok(Setting::Path("/var/cache/julia-fcgi/sysimage.so".into()))
    );
    assert!(Setting::parse("relative.so").is_err());
    assert_eq!(Base::parse("minimal"), Ok(Base::Minimal));
    assert!(Base::parse("small").is_err());
}

#[test]
fn the_installed_worker_uses_the_installed_image() {
    assert_eq!(
        default_path(Path::new("/usr/share/julia-fcgi/worker.jl")),
        Path::new("/var/cache/julia-fcgi/sysimage.so")
    );
    assert_eq!(
        statements_path(Path::new("/x/sysimage.so")),
        Path::new("/x/sysimage.precompile.jl")
    );
}
