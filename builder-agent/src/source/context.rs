//! Where the build context and the Dockerfile are inside a fetched source (reference 4.2).
//!
//! Quay's agent joins the source directory with `context` and opens `context/dockerfile_path`,
//! and builds with the Dockerfile named relative to the context (so `.dockerignore` applies). We
//! keep that, and also make sure neither escapes the source through `..` or a symlink: the agent
//! reads the Dockerfile and packs the context from the build machine's file system.

use std::io;
use std::path::{Path, PathBuf};

use super::error::SourceError;

/// Returns the build context directory (symlinks resolved) and the Dockerfile's path relative
/// to it.
///
/// `context` is relative to `dest` (a leading `/` is ignored, empty means `dest`);
/// `dockerfile_path` is relative to the context (empty means `Dockerfile`). Both must resolve
/// inside `dest`, the Dockerfile inside the context, and the Dockerfile must be a file.
pub fn resolve_context(
    dest: &Path,
    context: &str,
    dockerfile_path: &str,
) -> Result<(PathBuf, String), SourceError> {
    let root = dest.canonicalize().map_err(|source| SourceError::Io {
        op: "resolving",
        path: dest.to_owned(),
        source,
    })?;
    let ctx_rel = context.trim_start_matches('/');
    let ctx = match root.join(ctx_rel).canonicalize() {
        Ok(p) => p,
        Err(e) if is_missing(&e) => {
            return Err(SourceError::ContextMissing {
                context: context.to_owned(),
            });
        }
        Err(source) => {
            return Err(SourceError::Io {
                op: "resolving",
                path: root.join(ctx_rel),
                source,
            });
        }
    };
    if !ctx.starts_with(&root) {
        return Err(SourceError::ContextOutside {
            context: context.to_owned(),
        });
    }
    if !ctx.is_dir() {
        return Err(SourceError::ContextMissing {
            context: context.to_owned(),
        });
    }

    let df_rel = match dockerfile_path.trim_start_matches('/') {
        "" => "Dockerfile",
        p => p,
    };
    // The path as the user would recognise it, relative to the source root.
    let shown = Path::new(ctx_rel).join(df_rel).display().to_string();
    let missing = || SourceError::DockerfileMissing {
        path: shown.clone(),
    };
    let dockerfile = match ctx.join(df_rel).canonicalize() {
        Ok(p) => p,
        Err(e) if is_missing(&e) => return Err(missing()),
        Err(source) => {
            return Err(SourceError::Io {
                op: "resolving",
                path: ctx.join(df_rel),
                source,
            });
        }
    };
    let Ok(inside) = dockerfile.strip_prefix(&ctx) else {
        return Err(SourceError::DockerfileOutside {
            path: shown,
            context: context.to_owned(),
        });
    };
    if !dockerfile.is_file() {
        return Err(missing());
    }
    // A path canonicalize gave back is made of the names on disk; a non-UTF-8 one cannot be
    // passed to the engine API, so treat it like a missing Dockerfile.
    let relative = inside.to_str().ok_or_else(missing)?.to_owned();
    Ok((ctx, relative))
}

/// Not found, or a file where a directory was expected on the way.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub/docker")).unwrap();
        fs::write(src.join("Dockerfile"), "FROM a\n").unwrap();
        fs::write(src.join("sub/Dockerfile"), "FROM b\n").unwrap();
        fs::write(src.join("sub/docker/Dockerfile.prod"), "FROM c\n").unwrap();
        fs::write(tmp.path().join("secret"), "outside\n").unwrap();
        tmp
    }

    #[test]
    fn quay_defaults_and_subdirectories() {
        let tmp = tree();
        let src = tmp.path().join("src");
        let real = src.canonicalize().unwrap();
        assert_eq!(
            resolve_context(&src, "/", "Dockerfile").unwrap(),
            (real.clone(), "Dockerfile".to_owned())
        );
        assert_eq!(
            resolve_context(&src, "", "").unwrap(),
            (real.clone(), "Dockerfile".to_owned())
        );
        assert_eq!(
            resolve_context(&src, "/sub", "Dockerfile").unwrap(),
            (real.join("sub"), "Dockerfile".to_owned())
        );
        assert_eq!(
            resolve_context(&src, "/sub/", "docker/Dockerfile.prod").unwrap(),
            (real.join("sub"), "docker/Dockerfile.prod".to_owned())
        );
        assert_eq!(
            resolve_context(&src, "/", "sub/Dockerfile").unwrap(),
            (real, "sub/Dockerfile".to_owned())
        );
    }

    #[test]
    fn a_missing_dockerfile_names_the_path_tried() {
        let tmp = tree();
        let src = tmp.path().join("src");
        let err = resolve_context(&src, "/sub", "Dockerfile.dev").unwrap_err();
        assert!(
            matches!(&err, SourceError::DockerfileMissing { path } if path == "sub/Dockerfile.dev")
        );
        assert!(err.is_user_error());
        // A directory where the Dockerfile should be is just as missing.
        assert!(matches!(
            resolve_context(&src, "/", "sub").unwrap_err(),
            SourceError::DockerfileMissing { .. }
        ));
        assert!(matches!(
            resolve_context(&src, "/nope", "Dockerfile").unwrap_err(),
            SourceError::ContextMissing { .. }
        ));
        assert!(matches!(
            resolve_context(&src, "/Dockerfile", "x").unwrap_err(),
            SourceError::ContextMissing { .. }
        ));
    }

    #[test]
    fn escapes_through_dotdot_or_symlinks_are_refused() {
        let tmp = tree();
        let src = tmp.path().join("src");
        assert!(matches!(
            resolve_context(&src, "/..", "secret").unwrap_err(),
            SourceError::ContextOutside { .. }
        ));
        assert!(matches!(
            resolve_context(&src, "/sub", "../Dockerfile").unwrap_err(),
            SourceError::DockerfileOutside { .. }
        ));
        symlink("../../secret", src.join("sub/Dockerfile.link")).unwrap();
        assert!(matches!(
            resolve_context(&src, "/sub", "Dockerfile.link").unwrap_err(),
            SourceError::DockerfileOutside { .. }
        ));
        symlink("/etc", src.join("etc")).unwrap();
        assert!(matches!(
            resolve_context(&src, "/etc", "passwd").unwrap_err(),
            SourceError::ContextOutside { .. }
        ));
    }

    #[test]
    fn a_symlinked_dockerfile_inside_the_context_resolves_to_its_target() {
        let tmp = tree();
        let src = tmp.path().join("src");
        symlink("docker/Dockerfile.prod", src.join("sub/Dockerfile.ci")).unwrap();
        let (_, df) = resolve_context(&src, "/sub", "Dockerfile.ci").unwrap();
        assert_eq!(df, "docker/Dockerfile.prod");
    }
}
