//! The pool's sysimage settings, validated: `sysimage`, `sysimage_packages`,
//! `sysimage_base` and `sysimage_trace` in the config file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Base, Image, Inputs, Setting};

/// What the config says about the pool sysimage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `sysimage`: `auto` (default), `off`, or an image's path.
    pub setting: Setting,
    /// `sysimage_packages`: standard libraries and packages of the pool's
    /// project compiled into the image, in this order.
    pub packages: Vec<String>,
    /// `sysimage_base`: what `julia-fcgi sysimage build` builds on.
    pub base: Base,
    /// `sysimage_trace`: a directory where each worker records the
    /// precompile statements of what it compiles (`--trace-compile`), for
    /// the next build to compile ahead. Off when unset.
    pub trace_dir: Option<PathBuf>,
}

/// A setting that does not parse: the key, and why.
pub type Invalid = (&'static str, String);

impl Config {
    /// Validates the file's values. Package names are checked by the
    /// caller's rules for `preload` (Julia identifiers); `packages` are
    /// those names.
    pub fn parse(
        sysimage: Option<&str>,
        packages: Vec<String>,
        base: Option<&str>,
        trace_dir: Option<&Path>,
    ) -> Result<Config, Invalid> {
        let setting = sysimage
            .map(Setting::parse)
            .transpose()
            .map_err(|e| ("sysimage", e))?
            .unwrap_or_default();
        if let Some(twice) = packages
            .iter()
            .enumerate()
            .find_map(|(i, name)| packages[..i].contains(name).then_some(name))
        {
            return Err(("sysimage_packages", format!("{twice:?} is listed twice")));
        }
        let base = base
            .map(Base::parse)
            .transpose()
            .map_err(|e| ("sysimage_base", e))?
            .unwrap_or_default();
        if let Some(dir) = trace_dir {
            if !dir.is_absolute() {
                return Err((
                    "sysimage_trace",
                    format!("{}: expected an absolute path", dir.display()),
                ));
            }
        }
        Ok(Config {
            setting,
            packages,
            base,
            trace_dir: trace_dir.map(Path::to_owned),
        })
    }

    /// The image the pool's workers start from, if any: said in the log
    /// either way (which image, or why the one there is not used).
    pub fn choose(
        &self,
        julia: &Path,
        worker_file: &Path,
        env: &[(OsString, OsString)],
    ) -> Option<Image> {
        let inputs = Inputs::new(julia, worker_file, &self.packages, env);
        match Image::discover(&self.setting, &inputs) {
            Ok(Some(image)) => {
                tracing::info!("{}", image.describe());
                Some(image)
            }
            Ok(None) => {
                if self.setting == Setting::Auto {
                    tracing::info!(
                        "workers start from source: no pool sysimage at {} \
                         (`julia-fcgi sysimage build` makes one)",
                        super::default_path(worker_file).display()
                    );
                } else {
                    tracing::info!("workers start from source: sysimage = \"off\" in the config");
                }
                None
            }
            Err(refusal) => {
                tracing::warn!("{refusal}");
                None
            }
        }
    }

    /// Julia's arguments for worker `slot`: the image, and the trace file
    /// when `sysimage_trace` is set (a new one per worker process, so that
    /// a replaced worker's statements are kept).
    pub fn julia_args(&self, image: Option<&Image>, slot: u32) -> Vec<OsString> {
        let mut args = image.map(Image::julia_args).unwrap_or_default();
        // A missing directory records nothing rather than stop the worker.
        if let Some(dir) = self.trace_dir.as_ref().filter(|dir| dir.is_dir()) {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let mut arg = OsString::from("--trace-compile=");
            arg.push(dir.join(format!("worker-{slot}-{ms}.jl")));
            args.push(arg);
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let config = Config::parse(None, vec![], None, None).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.setting, Setting::Auto);
        assert!(config.julia_args(None, 1).is_empty());

        let err = Config::parse(Some("yes"), vec![], None, None).unwrap_err();
        assert_eq!(err.0, "sysimage");
        let err =
            Config::parse(None, vec!["Dates".into(), "Dates".into()], None, None).unwrap_err();
        assert_eq!(err.0, "sysimage_packages");
        let err = Config::parse(None, vec![], Some("tiny"), None).unwrap_err();
        assert_eq!(err.0, "sysimage_base");
        let err = Config::parse(None, vec![], None, Some(Path::new("traces"))).unwrap_err();
        assert_eq!(err.0, "sysimage_trace");
    }

    #[test]
    fn trace_files_are_per_worker_process() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(Some("off"), vec![], Some("minimal"), Some(dir.path())).unwrap();
        assert_eq!(config.base, Base::Minimal);
        let args = config.julia_args(None, 3);
        let arg = args[0].to_string_lossy().into_owned();
        let prefix = format!("--trace-compile={}/worker-3-", dir.path().display());
        assert!(arg.starts_with(&prefix) && arg.ends_with(".jl"), "{arg}");
        drop(dir);
        assert!(config.julia_args(None, 3).is_empty());
    }
}
