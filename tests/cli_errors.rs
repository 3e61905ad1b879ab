//! Bad input gives exit 125 and one clear line, and changes nothing.

mod cli_support;

use cli_support::Alcove;

#[test]
fn unknown_sandboxes_are_reported_by_every_command() {
    let a = Alcove::new();
    for args in [
        &["exec", "ghost", "--", "true"][..],
        &["stop", "ghost"],
        &["start", "ghost"],
        &["kill", "ghost"],
        &["rm", "ghost"],
        &["touch", "ghost"],
        &["inspect", "ghost"],
        &["logs", "ghost"],
        &["metrics", "ghost"],
        &["cp", "ghost:/etc/hostname", "/tmp/alcv-never-written"],
    ] {
        a.run(args).assert_error("ghost");
    }
    assert!(!std::path::Path::new("/tmp/alcv-never-written").exists());
}

#[test]
fn bad_names_and_flag_values_are_refused_before_anything_starts() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    let too_long = "a".repeat(64);
    for name in ["-bad", ".hidden", "a/b", "sp ace", "ünï", too_long.as_str()] {
        let out = a.run(&["create", "--rootfs", &rootfs, "--", name]);
        assert_eq!(out.code, 125, "{name}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{name}: {out:?}");
        let out = a.run(&["run", "--rootfs", &rootfs, "--name", name, "--", "true"]);
        assert_eq!(out.code, 125, "{name}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{name}: {out:?}");
    }
    a.run(&["create", "--rootfs", &rootfs, "a/b"]).assert_error("invalid sandbox name");

    for (args, needle) in [
        (&["run", "--cpus", "0", "--", "true"][..], "--cpus"),
        (&["run", "--cpus", "many", "--", "true"], "--cpus"),
        (&["run", "--memory", "-5", "--", "true"], "--memory"),
        (&["run", "--idle-timeout", "0", "--", "true"], "--idle-timeout"),
        (&["run", "--max-duration", "soon", "--", "true"], "--max-duration"),
        (&["run", "--backend", "qemu", "--", "true"], "--backend"),
        (&["run", "-e", "=value", "--", "true"], "--env"),
        (&["run", "-v", "/nonexistent-alcv:/mnt", "--", "true"], "/nonexistent-alcv"),
        (&["run", "-v", "/tmp:relative", "--", "true"], "absolute"),
        (&["run", "-w", "relative/dir", "--", "true"], "absolute"),
        (&["run", "--no-such-flag", "--", "true"], "--no-such-flag"),
        (&["exec", "--timeout", "x", "box", "--", "true"], "--timeout"),
        (&["stop", "--timeout", "-1", "box"], "--timeout"),
        (&["logs", "--source", "kernel", "box"], "--source"),
        (&["run", "-d", "-i", "--", "cat"], "-d"),
        (&["cp", "/tmp/a", "/tmp/b"], "NAME:/path"),
        (&["cp", "box:relative", "/tmp/b"], "absolute"),
        (&["run", "--pids", "2", "--", "true"], "--pids"),
        (&["run", "--disk", "1", "--", "true"], "--disk"),
        (&["run", "--shm-size", "0", "--", "true"], "--shm-size"),
        (&["run", "--tmp-size", "lots", "--", "true"], "--tmp-size"),
    ] {
        a.run(args).assert_error(needle);
    }
    // Missing rootfs, by name and by path.
    a.run(&["run", "--rootfs", "nosuch", "--", "true"]).assert_error("nosuch");
    a.run(&["create", "x", "--rootfs", "/nonexistent/rootfs"]).assert_error("/nonexistent/rootfs");
    a.run(&["rootfs", "rm", "nosuch"]).assert_error("nosuch");
    a.run(&["rootfs", "import", "bad", "/nonexistent.tar"]).assert_error("/nonexistent.tar");
    // None of it left a sandbox behind.
    assert!(a.ps().is_empty(), "{:?}", a.ps());

    // The jail's user-namespace switch takes `auto` or `off` only.
    let odd = Alcove::new().with_env("ALCOVE_JAIL_USERNS", "maybe");
    odd.run(&["create", "x", "--rootfs", &rootfs]).assert_error("ALCOVE_JAIL_USERNS=maybe is not understood");
    assert!(odd.ps().is_empty(), "{:?}", odd.ps());
}

#[test]
fn duplicate_names_are_refused_and_long_names_work() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    a.ok(&["create", "dup", "--rootfs", &rootfs]);
    a.run(&["create", "dup", "--rootfs", &rootfs]).assert_error("already exists");
    a.run(&["run", "--name", "dup", "--rootfs", &rootfs, "--", "true"]).assert_error("already exists");
    // The first one is untouched.
    assert_eq!(a.status("dup"), "Running");
    assert_eq!(a.ok(&["exec", "dup", "--", "echo", "still"]), "still\n");
    a.run(&["rm", "dup"]).assert_error("is running");

    // The longest valid name works; its socket path stays short.
    let long = format!("L{}", "x".repeat(62));
    a.ok(&["create", &long, "--rootfs", &rootfs]);
    assert_eq!(a.ok(&["exec", &long, "--", "hostname"]), format!("{long}\n"));
    let socket = a.inspect(&long)["socket"].as_str().expect("socket").to_string();
    assert!(socket.len() < 108, "{socket}");
    a.ok(&["rm", "-f", &long, "dup"]);
    assert!(a.ps().is_empty());
}

#[test]
fn help_doctor_and_rootfs_listing_work() {
    let a = Alcove::new();
    let help = a.ok(&["--help"]);
    for cmd in [
        "run", "create", "exec", "stop", "start", "kill", "rm", "touch", "ps", "inspect", "logs", "metrics", "cp",
        "doctor", "rootfs",
    ] {
        assert!(help.contains(cmd), "help lacks {cmd}");
    }
    let doc: serde_json::Value = serde_json::from_str(&a.ok(&["doctor", "--json"])).expect("doctor JSON");
    assert!(["jail", "krun"].contains(&doc["auto_backend"]["backend"].as_str().unwrap_or("")), "{doc}");
    assert!(a.ok(&["doctor"]).contains("--backend auto uses"));

    // rootfs import / ls / rm with a small tarball.
    let tmp = tempfile::tempdir_in("/tmp").expect("tmp");
    let tar = tmp.path().join("root.tar");
    let src = cli_support::shared_rootfs();
    let status =
        std::process::Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(src).arg(".").status().expect("tar");
    assert!(status.success());
    let out = a.ok(&["rootfs", "import", "mini", tar.to_str().expect("utf8")]);
    assert!(out.starts_with("mini "), "{out}");
    let ls: serde_json::Value = serde_json::from_str(&a.ok(&["rootfs", "ls", "--json"])).expect("ls JSON");
    assert!(ls.as_array().is_some_and(|l| l.iter().any(|r| r["name"] == "mini")), "{ls}");
    assert!(a.ok(&["rootfs", "ls"]).contains("mini"));
    // An imported rootfs runs by name.
    assert_eq!(a.ok(&["run", "--rootfs", "mini", "--", "echo", "imported"]), "imported\n");
    a.ok(&["rootfs", "rm", "mini"]);
    assert!(!a.ok(&["rootfs", "ls"]).contains("mini"));
}

#[test]
fn a_sandbox_process_that_cannot_start_says_why_in_one_line() {
    let a = Alcove::new();
    let rootfs = a.rootfs_arg();
    // A runtime directory under a regular file: nothing the CLI checks, but
    // the sandbox process cannot bind its socket there. Its own message
    // (written to the stderr pipe before it is ready) is the error.
    std::fs::create_dir_all(&a.home).expect("home");
    let blocker = a.home.join("blocker");
    std::fs::write(&blocker, "not a directory").expect("file");
    let mut cmd = a.cmd(&["run", "--rootfs", &rootfs, "--", "true"]);
    cmd.env("ALCOVE_RUNTIME_DIR", blocker.join("rt"));
    let out = cmd.output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("failed to start") && stderr.contains("blocker/rt"), "{stderr}");
    assert!(a.ps().is_empty(), "{:?}", a.ps());
}

/// A tree made by debootstrap holds real device nodes under /dev: the import
/// skips them with one line on stderr instead of refusing the archive.
#[test]
fn importing_a_tree_with_device_nodes_skips_them_with_one_line() {
    cli_support::require_root();
    let a = Alcove::new();
    let tmp = tempfile::tempdir_in("/tmp").expect("tmp");
    let tree = tmp.path().join("tree");
    let cp =
        std::process::Command::new("cp").arg("-a").arg(cli_support::shared_rootfs()).arg(&tree).status().expect("cp");
    assert!(cp.success());
    std::fs::create_dir_all(tree.join("dev")).expect("dev");
    for (node, minor) in [("null", 3), ("zero", 5)] {
        let _ = std::fs::remove_file(tree.join("dev").join(node));
        let ok = std::process::Command::new("mknod")
            .arg(tree.join("dev").join(node))
            .args(["c", "1", &minor.to_string()])
            .status()
            .expect("mknod");
        assert!(ok.success());
    }
    let tar = tmp.path().join("debootstrap.tar");
    let status =
        std::process::Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&tree).arg(".").status().expect("tar");
    assert!(status.success());
    let out = a.run(&["rootfs", "import", "deb", tar.to_str().expect("utf8")]);
    assert_eq!(out.code, 0, "{out:?}");
    let notices: Vec<&str> = out.stderr.lines().filter(|l| l.contains("device node")).collect();
    assert_eq!(notices, ["alcove: skipped 2 device nodes in /dev (a sandbox gets its own /dev)"], "{out:?}");
    // The sandbox's own /dev/null works.
    assert_eq!(a.ok(&["run", "--rm", "--rootfs", "deb", "--", "sh", "-c", "echo ok > /dev/null && echo ran"]), "ran\n");
}
