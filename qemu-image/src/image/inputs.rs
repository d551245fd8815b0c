//! What an image is made from, and the hashes that name it.
//!
//! [`Inputs::id`] names the image directory: any change to the package list, the kernel or
//! busybox version, either binary, the stage-1 script or the recipe makes a new image.
//! [`Inputs::base_id`] names the debootstrapped base tree and covers the package list only, so a
//! new agent binary does not re-run debootstrap.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever the build recipe changes what ends up in an image (a change of the recipe's
/// source changes [`recipe_sha256`] anyway).
pub const RECIPE_VERSION: u32 = 2;
/// Bumped whenever the base-tree recipe changes (its source is hashed too, see
/// [`base_recipe_sha256`]).
pub const BASE_RECIPE_VERSION: u32 = 1;

/// The sources of the whole build recipe, compiled in: editing any of them makes a new image.
const RECIPE_SOURCES: [&str; 5] = [
    include_str!("build.rs"),
    include_str!("rootfs.rs"),
    include_str!("initrd.rs"),
    include_str!("debs.rs"),
    include_str!("inputs.rs"),
];

/// sha256 of the build recipe's sources (`src/image/{build,rootfs,initrd,debs,inputs}.rs`).
pub fn recipe_sha256() -> String {
    sha256_hex(RECIPE_SOURCES.concat().as_bytes())
}

/// sha256 of the base-tree recipe's source (`src/image/rootfs.rs`: debootstrap, upgrade, strip).
pub fn base_recipe_sha256() -> String {
    sha256_hex(include_str!("rootfs.rs").as_bytes())
}
/// The Debian suite of the root filesystem.
pub const SUITE: &str = "bookworm";
/// The meta-package that names the current cloud kernel.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// The busybox package whose static binary is stage 1's userspace.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The package list (`qemu-image/packages.txt`), compiled in.
pub const PACKAGES_TXT: &str = include_str!("../../packages.txt");
/// The stage-1 init script (`qemu-image/guest/init-stage1.sh`), compiled in.
pub const STAGE1_SCRIPT: &str = include_str!("../../guest/init-stage1.sh");

/// Everything that determines an image's content. Serialised (field order fixed) into the hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// [`RECIPE_VERSION`].
    pub recipe_version: u32,
    /// [`BASE_RECIPE_VERSION`].
    pub base_recipe_version: u32,
    /// [`SUITE`].
    pub suite: String,
    /// Packages added to minbase, sorted and deduplicated.
    pub packages: Vec<String>,
    /// The versioned kernel package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub kernel_package: String,
    /// Its Debian version, e.g. `6.1.192-2`.
    pub kernel_version: String,
    /// The host's busybox-static version (its binary is copied into the initramfs).
    pub busybox_version: String,
    /// sha256 of the `builder-agent` binary as given (before stripping).
    pub agent_sha256: String,
    /// sha256 of the `quarry-init` binary as given (before stripping).
    pub init_sha256: String,
    /// sha256 of the stage-1 script.
    pub stage1_sha256: String,
    /// [`recipe_sha256`].
    #[serde(default)]
    pub recipe_sha256: String,
    /// [`base_recipe_sha256`].
    #[serde(default)]
    pub base_recipe_sha256: String,
    /// `name=candidate` of each listed package on the host when the image was built (with
    /// security updates): a new candidate makes a new base tree.
    #[serde(default)]
    pub package_versions: Vec<String>,
}

impl Inputs {
    /// The image id: the first 16 hex digits of the sha256 of these inputs as JSON.
    pub fn id(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).expect("inputs serialise to JSON");
        hash16(&json)
    }

    /// The base-tree id: covers only what debootstrap's result depends on.
    pub fn base_id(&self) -> String {
        let key = serde_json::json!({
            "base_recipe_version": self.base_recipe_version,
            "base_recipe_sha256": self.base_recipe_sha256,
            "suite": self.suite,
            "packages": self.packages,
            "package_versions": self.package_versions,
        });
        hash16(key.to_string().as_bytes())
    }
}

/// The package names in a `packages.txt` text: whitespace-separated, `#` comments, sorted and
/// deduplicated.
pub fn parse_packages(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a file's content as lowercase hex, streamed.
pub fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

fn hash16(bytes: &[u8]) -> String {
    let mut hex = sha256_hex(bytes);
    hex.truncate(16);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Inputs {
        Inputs {
            recipe_version: RECIPE_VERSION,
            base_recipe_version: BASE_RECIPE_VERSION,
            suite: SUITE.to_string(),
            packages: parse_packages("podman runc\n# comment\nkmod # trailing\n"),
            kernel_package: "linux-image-6.1.0-56-cloud-amd64".to_string(),
            kernel_version: "6.1.192-2".to_string(),
            busybox_version: "1:1.35.0-4+deb12u1+b1".to_string(),
            agent_sha256: sha256_hex(b"agent"),
            init_sha256: sha256_hex(b"init"),
            stage1_sha256: sha256_hex(STAGE1_SCRIPT.as_bytes()),
            recipe_sha256: recipe_sha256(),
            base_recipe_sha256: base_recipe_sha256(),
            package_versions: vec!["podman=4.3.1+ds1-8+b1".to_string()],
        }
    }

    #[test]
    fn packages_are_parsed_sorted_without_comments() {
        assert_eq!(
            parse_packages("b a\n# x y\n  c # d\n\na\n"),
            vec!["a", "b", "c"]
        );
        let list = parse_packages(PACKAGES_TXT);
        for needed in [
            "podman",
            "runc",
            "ca-certificates",
            "dropbear-bin",
            "iproute2",
        ] {
            assert!(
                list.iter().any(|p| p == needed),
                "packages.txt lacks {needed}"
            );
        }
    }

    #[test]
    fn id_is_stable_and_changes_with_every_input() {
        let base = sample();
        assert_eq!(base.id(), sample().id());
        assert_eq!(base.id().len(), 16);
        type Change = Box<dyn Fn(&mut Inputs)>;
        let variants: Vec<Change> = vec![
            Box::new(|i| i.recipe_version += 1),
            Box::new(|i| i.packages.push("zsh".into())),
            Box::new(|i| i.kernel_version = "6.1.193-1".into()),
            Box::new(|i| i.busybox_version = "1:1.36".into()),
            Box::new(|i| i.agent_sha256 = sha256_hex(b"agent2")),
            Box::new(|i| i.init_sha256 = sha256_hex(b"init2")),
            Box::new(|i| i.stage1_sha256 = sha256_hex(b"sh")),
            Box::new(|i| i.recipe_sha256 = sha256_hex(b"recipe")),
            Box::new(|i| i.package_versions[0] = "podman=4.3.1+ds1-8+deb12u1".into()),
        ];
        for change in variants {
            let mut other = sample();
            change(&mut other);
            assert_ne!(other.id(), base.id(), "{other:?}");
        }
    }

    #[test]
    fn base_id_ignores_binaries_and_kernel_but_not_packages() {
        let base = sample();
        let mut other = sample();
        other.agent_sha256 = sha256_hex(b"new agent");
        other.init_sha256 = sha256_hex(b"new init");
        other.kernel_version = "6.1.200-1".into();
        assert_eq!(other.base_id(), base.base_id());
        other.packages.push("strace".into());
        assert_ne!(other.base_id(), base.base_id());
        let mut bumped = sample();
        bumped.base_recipe_version += 1;
        assert_ne!(bumped.base_id(), base.base_id());
        let mut recipe = sample();
        recipe.base_recipe_sha256 = sha256_hex(b"new debootstrap step");
        assert_ne!(recipe.base_id(), base.base_id());
        let mut update = sample();
        update.package_versions[0] = "podman=4.3.1+ds1-8+deb12u1".into();
        assert_ne!(update.base_id(), base.base_id());
    }

    #[test]
    fn recipe_hash_covers_the_recipe_sources() {
        assert_eq!(recipe_sha256().len(), 64);
        assert_ne!(recipe_sha256(), base_recipe_sha256());
        assert!(RECIPE_SOURCES.iter().any(|s| s.contains("fn debootstrap(")));
    }

    #[test]
    fn sha256_of_file_matches_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_hex(b"hello"));
        assert_eq!(
            sha256_hex(b"hello"),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
