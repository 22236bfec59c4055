//! The managed plugins on a real Docker Engine: create, enable, discovery through the engine, a
//! group converging through them, the engine restarting a killed plugin, disable/enable, settings,
//! bad cases, and a versioned upgrade through a local registry.
//!
//! Needs an engine (`scripts/docker-engine.sh`) and the static binary (`make static`; `make test`
//! builds it first). With `CI=true` both must be there and the tests fail otherwise; elsewhere they
//! skip, saying why. Plugins are created as `infrakit-test/e2e-<name>` (found as `e2e-<name>`), so
//! they never collide with plugins a person has enabled on the same engine; a lock file keeps two
//! test runs on one machine (one engine) from interleaving.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::engine::{self, docker, docker_ok, static_bin_missing, text, Cli, STATIC_BIN};
use serde_json::{json, Value};

const REPO: &str = "infrakit-test";
/// The plugins one test works with: `REPO/PREFIX<name>:VERSION`, removed on drop.
struct Bundle {
    repo: String,
    prefix: String,
    version: String,
    build_dir: PathBuf,
}

impl Bundle {
    fn new(repo: &str, prefix: &str, version: &str, build_dir: &Path) -> Bundle {
        Bundle {
            repo: repo.to_string(),
            prefix: prefix.to_string(),
            version: version.to_string(),
            build_dir: build_dir.to_path_buf(),
        }
    }

    fn reference(&self, name: &str) -> String {
        format!("{}/{}{name}:{}", self.repo, self.prefix, self.version)
    }

    /// `scripts/plugins.sh CMD NAME...`
    fn script(&self, cmd: &str, names: &[&str]) -> Output {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/plugins.sh"))
            .arg(cmd)
            .args(names)
            .env("REPO", &self.repo)
            .env("NAME_PREFIX", &self.prefix)
            .env("VERSION", &self.version)
            .env("BIN", STATIC_BIN)
            .env("BUILD_DIR", &self.build_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/plugins.sh")
    }

    fn script_ok(&self, cmd: &str, names: &[&str]) -> String {
        let o = self.script(cmd, names);
        assert!(o.status.success(), "plugins.sh {cmd} failed: {}", text(&o));
        text(&o)
    }

    /// Removes `refs` and whatever else an interrupted run left under this test's prefix.
    fn remove(&self, refs: &[String]) {
        let ours = format!("{}/{}", self.repo, self.prefix);
        let listed = docker(&["plugin", "ls", "--format", "{{.Name}}"]);
        let leftovers = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|n| n.starts_with(&ours) && n.ends_with(&format!(":{}", self.version)))
            .map(str::to_string)
            .collect::<Vec<_>>();
        for r in refs.iter().chain(&leftovers) {
            let _ = docker(&["plugin", "disable", "-f", r]);
            let _ = docker(&["plugin", "rm", "-f", r]);
        }
    }
}

/// Ok(lock) when the tests should run; Err(()) after saying loudly why not. Panics in CI.
fn prerequisites() -> Result<File, ()> {
    engine::prerequisites("Docker Engine tests", static_bin_missing)
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    // The CLI prints InfraKit's PascalCase; accept either spelling so the test checks behaviour.
    let lower = name.to_ascii_lowercase();
    v.get(name)
        .or_else(|| v.get(&lower))
        .unwrap_or(&Value::Null)
}

/// Instance IDs in the directory (the file plugin's `<ID>.json`).
fn instance_ids(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".json")
                        .filter(|_| !n.starts_with('.'))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> Option<String>) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match check() {
            None => return,
            Some(why) => last = why,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {limit:?}; last: {last}");
}

/// Waits until the group reports converged with `size` instance files.
fn wait_converged(cli: &Cli, group_plugin: &str, id: &str, dir: &Path, size: usize) {
    wait_until(
        &format!("group {id} converged with {size}"),
        Duration::from_secs(45),
        || {
            let files = instance_ids(dir).len();
            match cli.describe(group_plugin, id) {
                Ok(d) if field(&d, "Converged") == &json!(true) && files == size => None,
                Ok(d) => Some(format!("{files} files; {d}")),
                Err(e) => Some(format!("{files} files; describe failed: {e}")),
            }
        },
    );
}

/// The pid (in the host's namespace) of a managed plugin's process: the process whose cgroup is
/// named after the plugin's ID and which is PID 1 in its own namespace.
fn plugin_pid(id: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if !cg.lines().any(|l| l.ends_with(&format!("/{id}"))) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let nspid_is_1 = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .is_some_and(|l| l.split_whitespace().last() == Some("1"));
        if nspid_is_1 {
            return Some(pid);
        }
    }
    None
}

fn plugin_id(reference: &str) -> String {
    docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", reference])
}

fn group_spec(id: &str, size: u64, instance: &str, flavor: &str, note: &str) -> String {
    json!({"ID": id, "Properties": {
        "Allocation": {"Size": size},
        "Instance": {"Plugin": instance, "Properties": {"Note": note}},
        "Flavor": {"Plugin": flavor, "Properties": {"Init": ["echo hello"], "Tags": {"tier": "web"}}}
    }})
    .to_string()
}

#[test]
fn managed_plugins_lifecycle() {
    let Ok(_lock) = prerequisites() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let instances = tmp.path().join("instances");
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&instances).expect("mkdir");
    std::fs::create_dir_all(&store).expect("mkdir");
    std::fs::create_dir_all(tmp.path().join("no-plugins")).expect("mkdir");
    let b = Bundle::new(REPO, "e2e-", "test", &tmp.path().join("build"));
    let names = ["instance-file", "flavor-vanilla", "flavor-combo", "group"];
    let refs: Vec<String> = names.iter().map(|n| b.reference(n)).collect();
    b.remove(&refs); // leftovers of an interrupted run
    let _cleanup = Cleanup(&b, refs.clone());
    let (ifile, group) = (b.reference("instance-file"), b.reference("group"));

    // make plugins, with settings, then make enable.
    b.script_ok("create", &names);
    let again = b.script_ok("create", &names);
    assert!(again.contains("up to date"), "re-running create: {again}");
    docker_ok(&[
        "plugin",
        "set",
        &ifile,
        &format!("instances.source={}", instances.display()),
    ]);
    docker_ok(&[
        "plugin",
        "set",
        &group,
        &format!("store.source={}", store.display()),
        "INFRAKIT_POLL_INTERVAL=500ms",
    ]);
    let start = Instant::now();
    b.script_ok("enable", &names);
    eprintln!("enabled 4 plugins in {:?}", start.elapsed());
    let ls = docker_ok(&["plugin", "ls", "--format", "{{.Name}} {{.Enabled}}"]);
    for r in &refs {
        assert!(ls.contains(&format!("{r} true")), "{r} not enabled: {ls}");
    }

    // The host CLI finds them through the engine only.
    let cli = Cli {
        plugins_dir: tmp.path().join("no-plugins"),
    };
    let found: Value =
        serde_json::from_str(&cli.ok(&["plugin", "ls", "--json"])).expect("plugin ls JSON");
    for n in names {
        let row = found
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["Name"] == json!(format!("e2e-{n}"))))
            .unwrap_or_else(|| panic!("e2e-{n} not listed: {found}"));
        assert_eq!(row["Source"], json!("engine"), "{row}");
        assert!(row.get("Error").is_none(), "{row}");
    }

    // Commit a group (through the combo flavor too, so a plugin reaches its peers) and converge.
    let spec = tmp.path().join("g.json");
    std::fs::write(
        &spec,
        json!({"ID": "e2e", "Properties": {
            "Allocation": {"Size": 3},
            "Instance": {"Plugin": "e2e-instance-file", "Properties": {"Note": "v1"}},
            "Flavor": {"Plugin": "e2e-flavor-combo", "Properties": {"Flavors": [
                {"Plugin": "e2e-flavor-vanilla", "Properties": {"Init": ["echo hi"]}}]}}
        }})
        .to_string(),
    )
    .expect("write spec");
    let spec = spec.display().to_string();
    cli.ok(&["group", "-n", "e2e-group", "commit", &spec]);
    wait_converged(&cli, "e2e-group", "e2e", &instances, 3);
    let first_ids = instance_ids(&instances);

    // None of the user's own runs: the CLI says, in one line, which plugin answered.
    let out = cli.run(&["group", "-n", "e2e-group", "ls", "-q"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.lines()
            .filter(|l| l
                .contains("plugin 'e2e-group' answers from the Docker engine's managed plugins")
                && l.contains("no-plugins"))
            .count(),
        1,
        "{said}"
    );
    // One of the user's own by the same name: it answers, silently, and `plugin ls` marks it as
    // the one picked, above the engine's.
    let mine = tmp.path().join("mine");
    let mut own = Command::new(common::BIN)
        .args([
            "plugin",
            "serve",
            "flavor-vanilla",
            "--name",
            "e2e-flavor-vanilla",
        ])
        .env("INFRAKIT_PLUGINS_DIR", &mine)
        .env("INFRAKIT_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("serve flavor-vanilla");
    let mine_cli = Cli {
        plugins_dir: mine.clone(),
    };
    let empty = tmp.path().join("empty.json");
    std::fs::write(&empty, "{}").expect("write");
    let empty = empty.display().to_string();
    wait_until(
        "the hand-run flavor answers",
        Duration::from_secs(20),
        || {
            let o = mine_cli.run(&["flavor", "-n", "e2e-flavor-vanilla", "validate", &empty]);
            (!o.status.success() || !o.stderr.is_empty()).then(|| text(&o))
        },
    );
    let rows: Value =
        serde_json::from_str(&mine_cli.ok(&["plugin", "ls", "--json"])).expect("plugin ls JSON");
    let vanilla: Vec<(Value, Value)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["Name"] == json!("e2e-flavor-vanilla"))
        .map(|r| (r["Source"].clone(), r["Picked"].clone()))
        .collect();
    assert_eq!(
        vanilla,
        vec![(json!("dir"), json!(true)), (json!("engine"), json!(false))],
        "{rows}"
    );
    let table = mine_cli.ok(&["plugin", "ls"]);
    let picked: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("e2e-flavor-vanilla "))
        .collect();
    assert!(
        picked.len() == 2
            && picked[0].contains('*')
            && picked[0].contains("dir")
            && !picked[1].contains('*'),
        "{table}"
    );
    let _ = own.kill();
    let _ = own.wait();

    // Kill the group plugin's process: the engine restarts it; the group is still managed.
    let gid = plugin_id(&group);
    let pid = plugin_pid(&gid).expect("the group plugin's process");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    wait_until(
        "the engine restarts the group plugin",
        Duration::from_secs(30),
        || match plugin_pid(&gid) {
            Some(p) if p != pid => None,
            other => Some(format!("pid {other:?}")),
        },
    );
    std::fs::remove_file(instances.join(format!("{}.json", first_ids[0]))).expect("rm instance");
    wait_converged(&cli, "e2e-group", "e2e", &instances, 3);

    // Disable/enable the group plugin with a long poll interval: still managed (store on the
    // host), and the setting took effect (a removed instance is not noticed for a while).
    let start = Instant::now();
    docker_ok(&["plugin", "disable", &group]);
    eprintln!("disabled the group plugin in {:?}", start.elapsed());
    // Change notifications would notice the loss at once (that is their job): off for this check.
    docker_ok(&[
        "plugin",
        "set",
        &group,
        "INFRAKIT_POLL_INTERVAL=1h",
        "INFRAKIT_CHANGE_NOTIFICATIONS=false",
    ]);
    let start = Instant::now();
    docker_ok(&["plugin", "enable", &group]);
    eprintln!("enabled the group plugin in {:?}", start.elapsed());
    wait_converged(&cli, "e2e-group", "e2e", &instances, 3);
    let ids = instance_ids(&instances);
    std::fs::remove_file(instances.join(format!("{}.json", ids[0]))).expect("rm instance");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        instance_ids(&instances).len(),
        2,
        "with a 1h poll interval the loss must not be noticed within 3 s"
    );
    docker_ok(&["plugin", "disable", &group]);
    docker_ok(&["plugin", "set", &group, "INFRAKIT_POLL_INTERVAL=300ms"]);
    docker_ok(&["plugin", "enable", &group]);
    wait_converged(&cli, "e2e-group", "e2e", &instances, 3);
    let ids = instance_ids(&instances);
    std::fs::remove_file(instances.join(format!("{}.json", ids[0]))).expect("rm instance");
    wait_until(
        "a short poll interval notices a lost instance",
        Duration::from_secs(5),
        || {
            let n = instance_ids(&instances).len();
            (n != 3).then(|| format!("{n} instances"))
        },
    );

    // The instance plugin disabled mid-reconcile: reported, nothing destroyed, carries on after.
    let before = instance_ids(&instances);
    docker_ok(&["plugin", "disable", &ifile]);
    std::thread::sleep(Duration::from_secs(2));
    let d = cli
        .describe("e2e-group", "e2e")
        .expect("describe while disabled");
    assert!(
        d.to_string().contains("e2e-instance-file"),
        "the group's status names the missing plugin: {d}"
    );
    docker_ok(&["plugin", "enable", &ifile]);
    wait_converged(&cli, "e2e-group", "e2e", &instances, 3);
    assert_eq!(instance_ids(&instances), before, "no instance re-created");

    // `infrakit plugin create` (no docker CLI): the same context, created under another name.
    let created = format!("{REPO}/e2e-created:test");
    let _ = docker(&["plugin", "rm", "-f", &created]);
    let ctx = tmp.path().join("build").join("flavor-vanilla");
    cli.ok(&["plugin", "create", &created, &ctx.display().to_string()]);
    let cfg = docker_ok(&[
        "plugin",
        "inspect",
        "-f",
        "{{.Enabled}} {{.Config.Interface.Socket}}",
        &created,
    ]);
    let _ = docker(&["plugin", "rm", "-f", &created]);
    assert_eq!(cfg, "false vanilla.sock");
    let err = cli.fails(&[
        "plugin",
        "create",
        &created,
        &tmp.path().display().to_string(),
    ]);
    assert!(err.contains("config.json"), "{err}");

    // Bad case: a plugin that is not enabled; the error names it and where it looked.
    docker_ok(&["plugin", "disable", &b.reference("flavor-vanilla")]);
    let err = cli.fails(&["flavor", "-n", "e2e-flavor-vanilla", "validate", &spec]);
    assert!(
        err.contains("e2e-flavor-vanilla") && err.contains("Docker engine"),
        "{err}"
    );
    let err = cli.fails(&["instance", "-n", "e2e-nowhere", "describe"]);
    assert!(
        err.contains("e2e-nowhere") && err.contains("no-plugins") && err.contains("Docker engine"),
        "{err}"
    );
}

/// Disables and removes the plugins at the end, whatever happened.
struct Cleanup<'a>(&'a Bundle, Vec<String>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        // The group controller first: it must not see its instance plugin vanish.
        let mut refs = self.1.clone();
        refs.reverse();
        self.0.remove(&refs);
    }
}

/// Debian's docker-registry on a free port of 127.0.0.1 (which the engine trusts without TLS).
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .expect("write registry config");
        let bin = ["/usr/bin/docker-registry", "/usr/bin/registry"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("Debian's docker-registry (scripts/docker-engine.sh installs it)");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("registry.log")).expect("registry log"))
            .spawn()
            .expect("start docker-registry");
        let r = Registry { child, addr };
        wait_until("the registry answers", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&r.addr)
                .err()
                .map(|e| e.to_string())
        });
        r
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn upgrade_through_a_registry_keeps_id_settings_and_instances() {
    let Ok(_lock) = prerequisites() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let instances = tmp.path().join("instances");
    let store = tmp.path().join("store");
    for d in [&instances, &store, &tmp.path().join("no-plugins")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let registry = Registry::start(tmp.path());
    let repo = format!("{}/{REPO}", registry.addr);
    let a = Bundle::new(&repo, "up-", "a", &tmp.path().join("build-a"));
    let bv = Bundle::new(&repo, "up-", "b", &tmp.path().join("build-b"));
    let names = ["instance-file", "flavor-vanilla", "group"];
    let refs_a: Vec<String> = names.iter().map(|n| a.reference(n)).collect();
    let refs_b: Vec<String> = names.iter().map(|n| bv.reference(n)).collect();
    a.remove(&refs_a);
    bv.remove(&refs_b);
    let _cleanup_b = Cleanup(&bv, refs_b.clone());
    let _cleanup_a = Cleanup(&a, refs_a.clone());

    // Version A and B pushed (make push), the local copies removed: only the registry has them.
    for bundle in [&a, &bv] {
        bundle.script_ok("create", &names);
        bundle.script_ok("push", &names);
    }
    a.remove(&refs_a);
    bv.remove(&refs_b);

    // Install A from the registry, with settings, and commit a group.
    for r in &refs_a {
        docker_ok(&[
            "plugin",
            "install",
            "--grant-all-permissions",
            "--disable",
            r,
        ]);
    }
    let (ifile, group) = (a.reference("instance-file"), a.reference("group"));
    docker_ok(&[
        "plugin",
        "set",
        &ifile,
        &format!("instances.source={}", instances.display()),
    ]);
    docker_ok(&[
        "plugin",
        "set",
        &group,
        &format!("store.source={}", store.display()),
        "INFRAKIT_POLL_INTERVAL=400ms",
    ]);
    a.script_ok("enable", &names);
    let cli = Cli {
        plugins_dir: tmp.path().join("no-plugins"),
    };
    let spec = tmp.path().join("g.json");
    std::fs::write(
        &spec,
        group_spec("up", 3, "up-instance-file", "up-flavor-vanilla", "v1"),
    )
    .expect("write spec");
    cli.ok(&[
        "group",
        "-n",
        "up-group",
        "commit",
        &spec.display().to_string(),
    ]);
    wait_converged(&cli, "up-group", "up", &instances, 3);
    let before = instance_ids(&instances);

    // Upgrade the group and instance plugins to B: disable, upgrade, enable.
    for name in ["group", "instance-file"] {
        let local = a.reference(name);
        let id = plugin_id(&local);
        // disable, docker plugin upgrade, re-apply mount settings, enable: scripts/plugins.sh.
        a.script_ok("upgrade", &[&local, &bv.reference(name)]);
        assert_eq!(
            plugin_id(&local),
            id,
            "{name}: same plugin ID after upgrade"
        );
        let reference = docker_ok(&["plugin", "inspect", "-f", "{{.PluginReference}}", &local]);
        assert_eq!(reference, bv.reference(name), "{name} runs version B");
    }
    let env = docker_ok(&["plugin", "inspect", "-f", "{{json .Settings}}", &group]);
    assert!(
        env.contains("INFRAKIT_POLL_INTERVAL=400ms") && env.contains(&store.display().to_string()),
        "settings kept: {env}"
    );
    let env = docker_ok(&[
        "plugin",
        "inspect",
        "-f",
        "{{json .Settings.Mounts}}",
        &ifile,
    ]);
    assert!(env.contains(&instances.display().to_string()), "{env}");
    wait_converged(&cli, "up-group", "up", &instances, 3);
    assert_eq!(instance_ids(&instances), before, "no instance re-created");
    // Still managed: a lost instance comes back.
    std::fs::remove_file(instances.join(format!("{}.json", before[0]))).expect("rm instance");
    wait_converged(&cli, "up-group", "up", &instances, 3);
}

/// `Engine::registry_has`, what `swarm deploy`/`upgrade` without `--push` ask for every plugin
/// before making anything (tests/swarm_deploy.rs checks the command on the lab): through the real
/// engine against Debian's docker-registry on loopback. A plugin reference that is not there is
/// `false`, one that is `true`, a registry that cannot be asked an error naming why.
#[test]
fn the_engine_tells_whether_a_plugin_reference_is_in_its_registry() {
    let Ok(_lock) = engine::prerequisites("plugin registry lookup test", || None) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut registry = Registry::start(tmp.path());
    let there = format!("{}/infrakit-selftest/standin:1", registry.addr);
    let absent = format!("{}/infrakit-selftest/standin:2", registry.addr);
    let nothing = format!("{}/infrakit-selftest/nothing:1", registry.addr);
    let engine = infrakit_docker::Engine::new("/var/run/docker.sock");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let has = |r: &str| rt.block_on(engine.registry_has(r));

    // A tiny stand-in plugin (only its reference matters), pushed and removed locally.
    let context = tmp.path().join("standin");
    std::fs::create_dir_all(context.join("rootfs/bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", context.join("rootfs/bin/busybox"))
        .expect("copy /bin/busybox (Debian's busybox-static)");
    std::fs::write(
        context.join("config.json"),
        r#"{"description": "infrakit selftest stand-in", "documentation": "-",
            "entrypoint": ["/bin/busybox", "sleep", "1000"],
            "interface": {"types": ["docker.dummy/1.0"], "socket": "x.sock"},
            "network": {"type": "host"}}"#,
    )
    .expect("write config.json");
    docker_ok(&["plugin", "create", &there, &context.display().to_string()]);
    let pushed = docker(&["plugin", "push", &there]);
    let _ = docker(&["plugin", "rm", "-f", &there]);
    assert!(pushed.status.success(), "push: {}", text(&pushed));

    assert!(has(&there).expect("asked"));
    assert!(!has(&absent).expect("asked"), "another tag");
    assert!(!has(&nothing).expect("asked"), "another repository");
    let _ = registry.child.kill();
    let _ = registry.child.wait();
    let e = has(&there).expect_err("the registry is gone");
    assert!(
        e.message.contains(&there) && e.message.contains("connection refused"),
        "{e}"
    );
}
