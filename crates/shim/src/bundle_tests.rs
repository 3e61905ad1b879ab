//! Unit tests of `bundle`: the spec `ctr run` writes is read, every field
//! alcove cannot honour is refused by name, the hostname is honoured.

use super::*;

/// The config.json containerd 1.6's `ctr run` wrote for `sleep 100`
/// (captured on this project's machine).
const CTR_RUN: &str = include_str!("testdata/ctr-run-config.json");

fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(CTR_RUN).expect("fixture is JSON");
    edit(&mut v);
    serde_json::to_vec(&v).expect("serialises")
}

fn refused(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    parse(&with(edit)).expect_err("refused").to_string()
}

#[test]
fn the_spec_ctr_run_writes_is_read() {
    let task = parse(CTR_RUN.as_bytes()).expect("ctr's default spec is accepted");
    assert_eq!(task.args, ["sleep", "100"]);
    assert_eq!(task.root_path, "rootfs");
    assert_eq!(task.cwd, "/");
    assert_eq!(task.user, "0:0");
    assert_eq!(
        task.env,
        [("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string())]
    );
    assert_eq!(task.rlimits, [alcove_protocol::Rlimit { resource: "nofile".into(), soft: 1024, hard: 1024 }]);
    assert_eq!((task.memory_mib, task.cpus, task.pids), (None, None, None));
    assert_eq!((task.network.as_deref(), task.idle_timeout), (None, None));
}

#[test]
fn the_hostname_becomes_the_sandboxs_and_a_bad_one_is_refused() {
    assert_eq!(parse(CTR_RUN.as_bytes()).expect("read").hostname, None, "none given: the sandbox name");
    let task = parse(&with(|v| v["hostname"] = "web.example".into())).expect("a hostname is honoured");
    assert_eq!(task.hostname.as_deref(), Some("web.example"));
    let err = refused(|v| v["hostname"] = "web_1".into());
    assert_eq!(err, "config.json: hostname \"web_1\" may contain only letters, digits, '-' and '.'");
}

#[test]
fn limits_become_the_sandboxs_limits() {
    let task = parse(&with(|v| {
        let r = &mut v["linux"]["resources"];
        r["memory"] = serde_json::json!({"limit": 100 * 1024 * 1024 + 1, "swap": 100 * 1024 * 1024 + 1});
        r["cpu"] = serde_json::json!({"shares": 512, "quota": 150_000, "period": 100_000});
        r["pids"] = serde_json::json!({"limit": 64});
    }))
    .expect("accepted");
    // Rounded up: a limit is never made tighter than asked.
    assert_eq!(task.memory_mib, Some(101));
    assert_eq!(task.cpus, Some(2));
    assert_eq!(task.pids, Some(64));
}

#[test]
fn alcove_annotations_select_options_and_bad_ones_are_refused() {
    let task = parse(&with(|v| {
        v["annotations"] = serde_json::json!({
            "io.alcove.network": "public",
            "io.alcove.idle-timeout": "30",
            "io.alcove.backend": "jail",
            "io.kubernetes.cri.container-type": "container",
        })
    }))
    .expect("accepted");
    assert_eq!(task.network.as_deref(), Some("public"));
    assert_eq!(task.idle_timeout, Some(Duration::from_secs(30)));

    let e = refused(|v| v["annotations"] = serde_json::json!({"io.alcove.network": "everything"}));
    assert!(e.starts_with("annotation io.alcove.network: unknown network profile \"everything\""), "{e}");
    let e = refused(|v| v["annotations"] = serde_json::json!({"io.alcove.idle-timeout": "0"}));
    assert!(e.contains("io.alcove.idle-timeout"), "{e}");
    let e = refused(|v| v["annotations"] = serde_json::json!({"io.alcove.colour": "blue"}));
    assert!(e.contains("unknown alcove option"), "{e}");
    let e = refused(|v| v["annotations"] = serde_json::json!({"io.alcove.backend": "krun"}));
    assert!(e.contains("only jail"), "{e}");
}

#[test]
fn what_alcove_cannot_honour_is_refused_by_name() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("process.args", Box::new(|v| v["process"]["args"] = serde_json::json!([]))),
        ("process.cwd", Box::new(|v| v["process"]["cwd"] = "relative".into())),
        ("process.capabilities", Box::new(|v| v["process"]["capabilities"]["bounding"][0] = "CAP_SYS_ADMIN".into())),
        ("process.rlimits", Box::new(|v| v["process"]["rlimits"][0]["type"] = "RLIMIT_RTPRIO".into())),
        ("process.user.additionalGids", Box::new(|v| v["process"]["user"]["additionalGids"] = serde_json::json!([27]))),
        ("root.readonly", Box::new(|v| v["root"]["readonly"] = true.into())),
        ("hooks", Box::new(|v| v["hooks"] = serde_json::json!({"prestart": []}))),
        (
            "mounts[/data]",
            Box::new(|v| {
                v["mounts"].as_array_mut().expect("mounts").push(serde_json::json!({
                    "destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind"]
                }))
            }),
        ),
        ("linux.seccomp", Box::new(|v| v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}))),
        ("linux.devices", Box::new(|v| v["linux"]["devices"] = serde_json::json!([{"path": "/dev/kvm", "type": "c"}]))),
        (
            "linux.resources.devices",
            Box::new(|v| {
                v["linux"]["resources"]["devices"].as_array_mut().expect("rules").push(serde_json::json!({
                    "allow": true, "type": "c", "major": 10, "minor": 232, "access": "rwm"
                }))
            }),
        ),
        ("linux.namespaces[network].path", Box::new(|v| v["linux"]["namespaces"][4]["path"] = "/proc/1/ns/net".into())),
        ("linux.sysctl", Box::new(|v| v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"}))),
        ("linux.uidMappings", Box::new(|v| v["linux"]["uidMappings"] = serde_json::json!([{"a": 1}]))),
        (
            "linux.resources.memory",
            Box::new(|v| v["linux"]["resources"]["memory"] = serde_json::json!({"reservation": 1})),
        ),
    ];
    for (field, edit) in cases {
        let e = refused(edit);
        assert!(e.contains(&format!("{field} is not supported by alcove")), "{field}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn unknown_fields_and_bad_json_are_refused_not_ignored() {
    let e = refused(|v| v["process"]["ioPriority"] = serde_json::json!({"class": "IOPRIO_CLASS_RT"}));
    assert!(e.contains("unknown field `ioPriority`"), "{e}");
    let e = refused(|v| v["linux"]["timeOffsets"] = serde_json::json!({}));
    assert!(e.contains("unknown field `timeOffsets`"), "{e}");
    let e = parse(b"{not json").expect_err("refused");
    assert!(matches!(e, BundleError::Malformed(_)), "{e:?}");
    let e = refused(|v| v.as_object_mut().expect("object").remove("process").map(drop).unwrap_or(()));
    assert!(e.contains("process is not supported by alcove: a task needs a process"), "{e}");
}

#[test]
fn an_execs_process_is_read_with_the_same_rules() {
    let v: serde_json::Value = serde_json::from_str(CTR_RUN).expect("fixture is JSON");
    let mut process = v["process"].clone();
    process["args"] = serde_json::json!(["cat", "/etc/hostname"]);
    let task = parse_process(&serde_json::to_vec(&process).expect("json")).expect("accepted");
    assert_eq!(task.args, ["cat", "/etc/hostname"]);
    assert_eq!(task.user, "0:0");
    assert_eq!(task.terminal, None);
    process["terminal"] = true.into();
    let task = parse_process(&serde_json::to_vec(&process).expect("json")).expect("accepted");
    assert_eq!(task.terminal, Some(DEFAULT_TERMINAL));
    process["consoleSize"] = serde_json::json!({"height": 50, "width": 132});
    let task = parse_process(&serde_json::to_vec(&process).expect("json")).expect("accepted");
    assert_eq!(task.terminal, Some(alcove_protocol::TtySize { rows: 50, cols: 132 }));
    process["rlimits"][0]["type"] = "RLIMIT_RTPRIO".into();
    let e = parse_process(&serde_json::to_vec(&process).expect("json")).expect_err("refused");
    assert!(e.to_string().contains("process.rlimits is not supported by alcove"), "{e}");
    let e = parse_process(b"[]").expect_err("refused");
    assert!(e.to_string().starts_with("config.json: exec process:"), "{e}");
}
