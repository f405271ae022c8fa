use super::*;

#[test]
fn finds_the_cgroup2_mount() {
    let mi = "\
24 30 0:22 / /sys type sysfs rw,nosuid - sysfs sysfs rw
33 24 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 24 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    assert_eq!(
        cgroup2_mount(mi),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    let bind = "40 24 0:30 /sub /mnt/cg rw - cgroup2 cgroup2 rw\n";
    assert_eq!(cgroup2_mount(bind), None);
    let esc = "40 24 0:30 / /mnt/c\\040g rw - cgroup2 cgroup2 rw\n";
    assert_eq!(cgroup2_mount(esc), Some(PathBuf::from("/mnt/c g")));
    assert_eq!(cgroup2_mount("garbage\n\n - \n"), None);
}

#[test]
fn reads_the_v2_path_and_populated() {
    assert_eq!(
        v2_path("4:memory:/x\n0::/system.slice/e.service\n"),
        Some("/system.slice/e.service")
    );
    assert_eq!(v2_path("4:memory:/x\n"), None);
    assert_eq!(v2_path("0::relative\n"), None);
    assert_eq!(populated("populated 1\nfrozen 0\n"), Some(true));
    assert_eq!(populated("populated 0\n"), Some(false));
    assert_eq!(populated(""), None);
}

#[test]
fn dir_names_are_safe() {
    assert_eq!(dir_name("app.ini"), "app.ini");
    assert_eq!(dir_name("app.ini:zerg"), "app.ini:zerg");
    assert_eq!(dir_name("a\nb/c.ini"), "a_b_c.ini");
    assert_eq!(dir_name(".hidden.ini"), "_.hidden.ini");
    assert_eq!(dir_name("cgroup.procs"), "_cgroup.procs");
    assert_eq!(dir_name(""), "_");
    assert_eq!(dir_name(&"x".repeat(300)).len(), 200);
}

#[test]
fn modes_parse() {
    assert_eq!("auto".parse::<Mode>(), Ok(Mode::Auto));
    assert_eq!("cgroup".parse::<Mode>(), Ok(Mode::Cgroup));
    assert_eq!("pgroup".parse::<Mode>(), Ok(Mode::Pgroup));
    assert_eq!(
        "x".parse::<Mode>().unwrap_err().to_string(),
        "--emperor-process-tree \"x\": expected auto, cgroup or pgroup"
    );
}

#[test]
fn errors_say_what_to_do() {
    let e = CgroupError::Io {
        what: "read",
        path: "/proc/self/cgroup".into(),
        err: io::Error::from_raw_os_error(libc::EACCES),
    };
    let m = e.to_string();
    assert!(
        m.starts_with("cannot read /proc/self/cgroup: Permission denied"),
        "{m}"
    );
    assert!(m.ends_with(WHAT_TO_DO), "{m}");
    assert!(CgroupError::NoMount
        .to_string()
        .contains("--emperor-process-tree=pgroup"));
}

#[test]
fn retries_back_off_to_a_second() {
    assert_eq!(backoff(0), Duration::from_millis(5));
    assert_eq!(backoff(3), Duration::from_millis(40));
    assert_eq!(backoff(50), Duration::from_secs(1));
}
