use super::*;

fn opts(args: &[&str]) -> Options {
    let mut v = vec!["emperor", "/v"];
    v.extend_from_slice(args);
    Options::parse_from_args(v).unwrap()
}

#[test]
fn no_uid_or_gid_means_no_identity() {
    assert_eq!(Identity::resolve(&opts(&[])).unwrap(), None);
}

#[test]
fn names_and_numbers_resolve() {
    let nobody = User::from_name("nobody").unwrap().expect("user nobody");
    let by_name = Identity::resolve(&opts(&["--uid", "nobody"]))
        .unwrap()
        .unwrap();
    assert_eq!(by_name.uid, Some(nobody.uid.as_raw()));
    assert_eq!(by_name.gid, nobody.gid.as_raw(), "the user's primary group");
    assert!(by_name.groups.contains(&nobody.gid.as_raw()));
    assert!(
        by_name.label.starts_with("user nobody ("),
        "{}",
        by_name.label
    );
    let num = nobody.uid.as_raw().to_string();
    let by_number = Identity::resolve(&opts(&["--uid", &num])).unwrap().unwrap();
    assert_eq!(by_number, by_name);

    let root_group = Identity::resolve(&opts(&["--uid", "nobody", "--gid", "0"]))
        .unwrap()
        .unwrap();
    assert_eq!(root_group.gid, 0);
    let only_gid = Identity::resolve(&opts(&["--gid", "0"])).unwrap().unwrap();
    assert_eq!((only_gid.uid, only_gid.gid), (None, 0));
    assert!(only_gid.groups.is_empty());
}

#[test]
fn unknown_names_are_clear_errors() {
    let e = Identity::resolve(&opts(&["--uid", "no-such-user-here"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no user named `no-such-user-here`"), "{e}");
    let e = Identity::resolve(&opts(&["--gid", "no-such-group-here"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no group named `no-such-group-here`"), "{e}");
    // A numeric uid without a passwd entry has no primary group to fall back on.
    let e = Identity::resolve(&opts(&["--uid", "3999999"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gid"), "{e}");
    let id = Identity::resolve(&opts(&["--uid", "3999999", "--gid", "3999999"]))
        .unwrap()
        .unwrap();
    assert!(id.groups.is_empty());
}

#[test]
fn umask_is_octal() {
    assert_eq!(parse_umask("022").unwrap(), 0o022);
    assert_eq!(parse_umask("0027").unwrap(), 0o027);
    assert_eq!(parse_umask(" 7 ").unwrap(), 0o007);
    for bad in ["", "8", "0x22", "1777", "-1", "abc"] {
        let e = parse_umask(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("`{bad}`")), "{e}");
    }
}

#[test]
fn bad_env_entries_are_named() {
    for (args, needle) in [
        (&["--env", "NOEQUALS"][..], "env `NOEQUALS`"),
        (&["--env", "=v"][..], "env `=v`"),
        (&["--unenv", "A=B"][..], "unenv `A=B`"),
    ] {
        let e = check_environment(&opts(args)).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn combinations_that_need_root_are_refused() {
    for extra in [
        &["--emperor-tyrant"][..],
        &["--emperor-cap", "net_bind_service"][..],
        &["--emperor-use-clone", "net"][..],
    ] {
        let mut args = vec!["--uid", "nobody"];
        args.extend_from_slice(extra);
        let o = opts(&args);
        let e = Identity::resolve(&o)
            .unwrap()
            .unwrap()
            .check(&o)
            .unwrap_err()
            .to_string();
        assert!(e.contains(extra[0]), "{e}");
    }
}
