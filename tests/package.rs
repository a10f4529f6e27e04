//! The Debian package, built by `scripts/package-deb` and read back with
//! `dpkg-deb`: file modes (the main configuration may hold passwords) and the
//! maintainer script that gives it to the service's group.

use std::path::Path;
use std::process::Command;

/// Build the package for this machine's architecture in a temporary target
/// directory, and list its files as `(mode, owner/group, path)`.
fn built_package(dir: &Path) -> Vec<(String, String, String)> {
    for tool in ["dpkg-deb", "readelf"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is not installed: this test builds the Debian package. Install it with `apt-get install -y dpkg-dev binutils` and run the tests again."
        );
    }
    // What goes in as /usr/bin/vigil is not under test, only where files
    // go and their modes: a small glibc binary keeps the xz step short.
    let release = dir.join("release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::copy("/bin/true", release.join("vigil")).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/package-deb"))
        .arg("--no-build")
        .env("CARGO_TARGET_DIR", dir)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "package-deb failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let list = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(list.status.success());
    String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[5].to_string())
        })
        .collect()
}

#[test]
fn config_with_passwords_is_not_world_readable_in_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let files = built_package(dir.path());
    let mode = |path: &str| {
        files
            .iter()
            .find(|(_, _, p)| p == path)
            .map(|(m, o, _)| (m.as_str(), o.as_str()))
            .unwrap_or_else(|| panic!("{path} is not in the package: {files:#?}"))
    };
    // The group is the service's, which exists only once postinst has run:
    // the package ships root:root 0640 and postinst hands it to group vigil.
    assert_eq!(mode("./etc/vigil/vigil.toml"), ("-rw-r-----", "root/root"));
    assert_eq!(
        mode("./etc/vigil/devices/default.toml"),
        ("-rw-r--r--", "root/root")
    );
    assert_eq!(mode("./usr/bin/vigil"), ("-rwxr-xr-x", "root/root"));

    let control = dir.path().join("control");
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(
            dir.path()
                .join("debian")
                .read_dir()
                .unwrap()
                .find_map(|e| {
                    let p = e.unwrap().path();
                    (p.extension()? == "deb").then_some(p)
                })
                .unwrap(),
        )
        .arg(&control)
        .output()
        .unwrap();
    assert!(out.status.success());
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("chown root:vigil /etc/vigil/vigil.toml")
            && postinst.contains("chmod 0640 /etc/vigil/vigil.toml"),
        "postinst does not give vigil.toml to the group vigil:\n{postinst}"
    );
}
