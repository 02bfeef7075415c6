//! `gpuslice tenant create|flags|delete|list`: tenants that outlive a command, for podman
//! and Docker users, whose containers join them with a few flags.
//!
//! A tenant made by `gpuslice run` lasts as long as its runs; a container started by hand
//! needs one that is there before it and after it. `create` writes the quota as `run` would
//! (the same flags, [`QuotaFlags::request`]), under the tenant's entry lock
//! ([`tenancy::create`]), with a marker of its own; the container's flags come from the same
//! CDI spec `gpuslice cdi generate` writes ([`cdi::Layout::spec`]), rendered as `--mount`
//! and `-e` flags that podman and Docker both take, so the two cannot say different things.
//! `delete` keeps a tenant in use ([`tenancy::remove`]) unless forced.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use gpuslice_ledger::{Ledger, TenantName, TenantQuota};

#[cfg(doc)]
use crate::cli::QuotaFlags;
use crate::cli::{
    TenantCommand, TenantCreateArgs, TenantDeleteArgs, TenantFlagsArgs, TenantListArgs,
};
use crate::compute::format_percent;
use crate::exit::{self, Failure, ResultExt};
use crate::quantity::format_size;
use crate::tenancy::{self, TenancyError};
use crate::{locate, shim_check};
use gpuslice_k8s::cdi::{self, Layout, Preload};
use gpuslice_k8s::device_plugin::tenants as plugin_tenants;

/// The line of the marker file that names the tenant's CDI spec.
const CDI_SPEC_LINE: &str = "cdi-spec=";

/// Runs `gpuslice tenant ...`.
pub fn tenant(command: TenantCommand) -> Result<u8, Failure> {
    match command {
        TenantCommand::Create(args) => create(&args),
        TenantCommand::Flags(args) => flags(&args),
        TenantCommand::Delete(args) => delete(&args),
        TenantCommand::List(args) => list(&args),
    }
}

/// `gpuslice tenant create`.
fn create(args: &TenantCreateArgs) -> Result<u8, Failure> {
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    let layout = layout(dir, args.shim.as_deref())?;
    let quota = args.quota.request().usage()?.new_tenant_quota();
    let ledger = Ledger::open(&layout.ledger_host).usage()?;
    let t = &args.name;
    let spec_path = args
        .cdi_dir
        .as_ref()
        .map(|d| d.join(cdi::spec_file_name(t)));
    let mut marker = format!(
        "created by `gpuslice tenant create` (pid {})\n",
        std::process::id()
    );
    if let Some(path) = &spec_path {
        marker.push_str(&format!("{CDI_SPEC_LINE}{}\n", path.display()));
    }
    match tenancy::create(&ledger, t, &quota, &marker) {
        Ok(()) => {}
        Err(TenancyError::Exists { .. }) => {
            return Err(anyhow!(
                "tenant {t} exists already in {}; `gpuslice tenant flags {t}` prints the flags \
                 of its containers, `gpuslice tenant delete {t}` removes it",
                layout.ledger_host.display()
            ))
            .usage();
        }
        Err(e @ TenancyError::Reserved { .. }) => return Err(e).usage(),
        // Someone is in it: in use, as for delete.
        Err(e @ TenancyError::EntryHeld { .. }) => {
            return Err(Failure::new(exit::PROBLEMS, e.into()));
        }
        Err(e) => return Err(e).failed(),
    }
    // Everything a container of it mounts must exist before the first one starts.
    let prepared = prepare(&ledger, &layout, t).and_then(|()| match &spec_path {
        Some(path) => write_spec(&layout, t, path),
        None => Ok(()),
    });
    if let Err(e) = prepared {
        let _ = ledger.remove_tenant(t);
        return Err(e).failed();
    }
    eprintln!(
        "gpuslice: created tenant {t} in {}: {}",
        layout.ledger_host.display(),
        describe(&quota)
    );
    let line = match &spec_path {
        Some(path) => {
            eprintln!(
                "gpuslice: wrote its CDI spec {}; give containers the flag below, with the GPU \
                 (podman: --device nvidia.com/gpu=all)",
                path.display()
            );
            format!("--device {}", cdi::device_name(t))
        }
        None => {
            eprintln!(
                "gpuslice: give podman run or docker run the flags below, with the GPU \
                 (podman: --device nvidia.com/gpu=all; docker: --gpus all)"
            );
            shell_line(&container_flags(&layout.spec(std::slice::from_ref(t))))
        }
    };
    println!("{line}");
    Ok(exit::OK)
}

/// `gpuslice tenant flags`.
fn flags(args: &TenantFlagsArgs) -> Result<u8, Failure> {
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    let layout = layout(dir, args.shim.as_deref())?;
    let ledger = existing_ledger(&layout.ledger_host)?;
    let t = &args.name;
    if ledger.read_quota(t).failed()?.is_none() {
        return Err(anyhow!(
            "no tenant {t} with a quota in {} (gpuslice tenant list shows them)",
            layout.ledger_host.display()
        ))
        .usage();
    }
    prepare(&ledger, &layout, t).failed()?;
    println!(
        "{}",
        shell_line(&container_flags(&layout.spec(std::slice::from_ref(t))))
    );
    Ok(exit::OK)
}

/// `gpuslice tenant delete`.
fn delete(args: &TenantDeleteArgs) -> Result<u8, Failure> {
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    let ledger = existing_ledger(&dir)?;
    let t = &args.name;
    if !ledger.tenant_dir(t).exists() && !ledger.lock_path(t).exists() {
        return Err(anyhow!(
            "no tenant {t} in {} (gpuslice tenant list shows them)",
            dir.display()
        ))
        .usage();
    }
    let made_by = made_by(&ledger, t);
    if made_by == MadeBy::DevicePlugin && !args.force {
        println!(
            "kept tenant {t}: the device plugin made it for a container's GPU slices, and \
             removes it when the container is gone; --force deletes it even so (the \
             container then runs without its quota)"
        );
        return Ok(exit::PROBLEMS);
    }
    if made_by == MadeBy::DraDriver && !args.force {
        println!(
            "kept tenant {t}: the DRA driver made it for a ResourceClaim, and removes it when \
             the kubelet unprepares the claim; --force deletes it even so (the claim's \
             containers then run without its quota, and the driver no longer counts the \
             claim's share of the GPU)"
        );
        return Ok(exit::PROBLEMS);
    }
    let spec = spec_of(&ledger, t);
    let removal = tenancy::remove(&ledger, t, args.force).failed()?;
    let mut users = Vec::new();
    if removal.live_processes > 0 {
        users.push(format!(
            "{} process(es) of it hold a live slot (using a GPU)",
            removal.live_processes
        ));
    }
    if removal.runs_inside {
        users.push("a gpuslice run is in it".to_string());
    }
    if removal.entry_held {
        users.push(format!(
            "its entry lock stayed taken for {} s (a process of it holds it?)",
            tenancy::ENTRY_PATIENCE.as_secs()
        ));
    }
    if !removal.removed {
        println!(
            "kept tenant {t}: {}; stop them first, or --force deletes it even so",
            users.join(", and ")
        );
        return Ok(exit::PROBLEMS);
    }
    if !users.is_empty() {
        eprintln!(
            "gpuslice: warning: deleted tenant {t} although {}: its running processes keep \
             the quota they read, but one that starts in its containers from now on runs \
             without limits; stop them",
            users.join(", and ")
        );
    }
    if let Some(spec) = spec {
        match std::fs::remove_file(&spec) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "gpuslice: warning: could not remove its CDI spec {}: {e}",
                spec.display()
            ),
        }
    }
    println!("deleted tenant {t}");
    Ok(exit::OK)
}

/// `gpuslice tenant list`.
fn list(args: &TenantListArgs) -> Result<u8, Failure> {
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    let ledger = existing_ledger(&dir)?;
    let rows: Vec<Row> = match ledger.tenants() {
        Ok(tenants) => tenants.iter().map(|t| row(&ledger, t)).collect(),
        // An existing, empty ledger directory: no tenants yet.
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e).failed(),
    };
    print!("{}", render(&rows));
    Ok(exit::OK)
}

/// The ledger at `dir`, which must exist: listing or deleting in a mistyped directory must
/// not look like an empty ledger.
fn existing_ledger(dir: &Path) -> Result<Ledger, Failure> {
    if !dir.is_dir() {
        return Err(anyhow!(
            "the ledger directory {} does not exist (pass --dir DIR or set GPUSLICE_DIR)",
            dir.display()
        ))
        .usage();
    }
    Ok(Ledger::at_path(dir))
}

/// Where the ledger and the shim are, the same on the host and in containers; the shim
/// proven to be the shim (a container given another file would run without limits).
fn layout(dir: PathBuf, shim: Option<&Path>) -> Result<Layout, Failure> {
    let shim = locate::shim(shim).usage()?;
    shim_check::identify(&shim).usage()?;
    let layout = Layout {
        ledger_container: dir.clone(),
        shim_container: shim.clone(),
        ledger_host: dir,
        shim_host: shim,
        preload: Preload::Env,
    };
    layout.check_paths().usage()?;
    Ok(layout)
}

/// The files a container of `t` mounts: its usage and lock files (writable by the
/// container's user, whoever it is) and the file that pins it.
fn prepare(ledger: &Ledger, layout: &Layout, t: &TenantName) -> anyhow::Result<()> {
    plugin_tenants::prepare_usage(ledger, t)?;
    cdi::ensure_pin_file(layout, t)?;
    Ok(())
}

/// Writes the CDI spec of tenant `t` alone at `path`, creating its directory.
fn write_spec(layout: &Layout, t: &TenantName, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    let text = cdi::to_json(&layout.spec(std::slice::from_ref(t)))?;
    cdi::write_atomically(path, &text)?;
    Ok(())
}

/// The CDI spec `create` wrote for `t`, as its marker names it.
fn spec_of(ledger: &Ledger, t: &TenantName) -> Option<PathBuf> {
    let text = std::fs::read_to_string(ledger.tenant_dir(t).join(tenancy::CREATE_MARKER)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(CDI_SPEC_LINE))
        .map(PathBuf::from)
}

/// The flags of `podman run` and `docker run` that apply the spec's edits (those of the
/// spec and of its devices): a bind `--mount` per mount, `-e` per variable.
fn container_flags(spec: &cdi::Spec) -> Vec<String> {
    let edits = std::iter::once(&spec.container_edits)
        .chain(spec.devices.iter().map(|d| &d.container_edits));
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    for edit in edits {
        for m in &edit.mounts {
            let mut value = format!(
                "type=bind,source={},target={}",
                m.host_path, m.container_path
            );
            if m.options.iter().any(|o| o == "ro") {
                value.push_str(",readonly");
            }
            mounts.push("--mount".to_string());
            mounts.push(value);
        }
        for e in &edit.env {
            env.push("-e".to_string());
            env.push(e.clone());
        }
    }
    mounts.extend(env);
    mounts
}

/// The words as one line a shell reads back as those words: a word with anything but
/// letters, digits and `_./=,:+@%-` is single-quoted.
fn shell_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_./=,:+@%-".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Who made a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MadeBy {
    TenantCreate,
    Run,
    DevicePlugin,
    DraDriver,
    Other,
}

impl MadeBy {
    fn words(self) -> &'static str {
        match self {
            MadeBy::TenantCreate => "tenant create",
            MadeBy::Run => "gpuslice run",
            MadeBy::DevicePlugin => "device plugin",
            MadeBy::DraDriver => "DRA driver",
            MadeBy::Other => "-",
        }
    }
}

/// Who made tenant `t`, from the marks each maker leaves in its directory.
fn made_by(ledger: &Ledger, t: &TenantName) -> MadeBy {
    let dir = ledger.tenant_dir(t);
    if dir.join(tenancy::CREATE_MARKER).exists() {
        MadeBy::TenantCreate
    } else if dir.join(tenancy::MARKER).exists() {
        MadeBy::Run
    } else if dir.join(plugin_tenants::RECORD).exists() {
        MadeBy::DevicePlugin
    } else if dir.join(gpuslice_k8s::dra::state::RECORD).exists() {
        MadeBy::DraDriver
    } else {
        MadeBy::Other
    }
}

/// One tenant in the list.
#[derive(Debug)]
struct Row {
    name: String,
    /// The quota, or why it cannot be read; `None` without a quota file.
    quota: Result<Option<TenantQuota>, String>,
    made_by: MadeBy,
    live: Result<usize, String>,
}

fn row(ledger: &Ledger, t: &TenantName) -> Row {
    Row {
        name: t.to_string(),
        quota: ledger
            .read_quota(t)
            .map(|q| q.map(|q| q.quota()))
            .map_err(|e| e.to_string()),
        made_by: made_by(ledger, t),
        live: ledger.live_processes(t).map_err(|e| e.to_string()),
    }
}

/// The quota in words, for `create`'s note.
fn describe(quota: &TenantQuota) -> String {
    let d = quota.defaults;
    let mut words = vec![match d.memory_bytes {
        Some(m) => format!("memory {} per GPU", format_size(m)),
        None if quota.per_gpu.is_empty() => "memory unlimited".to_string(),
        None => "memory unlimited on other GPUs".to_string(),
    }];
    for (uuid, limits) in &quota.per_gpu {
        if let Some(m) = limits.memory_bytes {
            words.push(format!("{} on {uuid}", format_size(m)));
        }
    }
    words.push(format!("share {}", percent(d.compute_share_permille)));
    words.push(format!("limit {}", percent(d.compute_limit_permille)));
    words.push(format!(
        "priority {}",
        d.priority.map_or("normal", |p| p.name())
    ));
    words.join(", ")
}

/// A GPU's own limits, for the line under a tenant's row: its memory, and the compute
/// settings it sets (the device plugin and the DRA driver give their tenants these on their
/// GPUs alone, so the row's defaults say nothing of them).
fn describe_gpu(uuid: &gpuslice_ledger::GpuUuid, limits: &gpuslice_ledger::Limits) -> String {
    let mut words = vec![format!(
        "{} on {uuid}",
        limits.memory_bytes.map_or("unlimited".into(), format_size)
    )];
    if let Some(share) = limits.compute_share_permille {
        words.push(format!("share {}%", format_percent(share)));
    }
    if let Some(limit) = limits.compute_limit_permille {
        words.push(format!("limit {}%", format_percent(limit)));
    }
    if let Some(priority) = limits.priority {
        words.push(format!("priority {}", priority.name()));
    }
    words.join(", ")
}

/// A permille setting as a percentage, or `none`.
fn percent(permille: Option<u32>) -> String {
    permille.map_or_else(|| "none".into(), |p| format!("{}%", format_percent(p)))
}

/// The list as a table: a row per tenant, a line under it per GPU with a limit of its own.
fn render(rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max("TENANT".len());
    let line = |cells: [&str; 7]| {
        let text = format!(
            "{:<width$}  {:>10}  {:>6}  {:>6}  {:<8}  {:>9}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        );
        text.trim_end().to_string() + "\n"
    };
    let mut out = line([
        "TENANT",
        "MEMORY",
        "SHARE",
        "LIMIT",
        "PRIORITY",
        "PROCESSES",
        "MADE BY",
    ]);
    if rows.is_empty() {
        out.push_str("(no tenants)\n");
    }
    for r in rows {
        let live = match &r.live {
            Ok(n) => n.to_string(),
            Err(_) => "?".into(),
        };
        match &r.quota {
            Ok(Some(q)) => {
                let d = q.defaults;
                let memory = d.memory_bytes.map_or("unlimited".into(), format_size);
                let share = d
                    .compute_share_permille
                    .map_or("-".into(), |p| format!("{}%", format_percent(p)));
                let limit = d
                    .compute_limit_permille
                    .map_or("-".into(), |p| format!("{}%", format_percent(p)));
                let priority = d.priority.map_or("-", |p| p.name());
                out.push_str(&line([
                    &r.name,
                    &memory,
                    &share,
                    &limit,
                    priority,
                    &live,
                    r.made_by.words(),
                ]));
                for (uuid, limits) in &q.per_gpu {
                    out.push_str(&format!("  {}\n", describe_gpu(uuid, limits)));
                }
            }
            Ok(None) => out.push_str(&line([
                &r.name,
                "no quota",
                "-",
                "-",
                "-",
                &live,
                r.made_by.words(),
            ])),
            Err(e) => {
                out.push_str(&line([
                    &r.name,
                    "?",
                    "?",
                    "?",
                    "?",
                    &live,
                    r.made_by.words(),
                ]));
                out.push_str(&format!("  error: {e}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::{GpuUuid, Limits, Priority};

    fn layout() -> Layout {
        Layout {
            ledger_host: "/run/gpuslice".into(),
            ledger_container: "/run/gpuslice".into(),
            shim_host: "/opt/gpuslice/lib/libgpuslice.so".into(),
            shim_container: "/opt/gpuslice/lib/libgpuslice.so".into(),
            preload: Preload::Env,
        }
    }

    #[test]
    fn flags_mount_and_set_what_the_cdi_spec_does() {
        let t = TenantName::new("team-a").unwrap();
        let flags = container_flags(&layout().spec(std::slice::from_ref(&t)));
        let line = shell_line(&flags);
        for expected in [
            "--mount type=bind,source=/opt/gpuslice/lib/libgpuslice.so,target=/opt/gpuslice/lib/libgpuslice.so,readonly",
            "--mount type=bind,source=/run/gpuslice/tenants,target=/run/gpuslice/tenants,readonly",
            "--mount type=bind,source=/run/gpuslice/tenants/team-a/usage,target=/run/gpuslice/tenants/team-a/usage ",
            "--mount type=bind,source=/run/gpuslice/locks/team-a,target=/run/gpuslice/locks/team-a ",
            "--mount type=bind,source=/run/gpuslice/tenants/team-a/pinned,target=/etc/gpuslice/tenant,readonly",
            "-e LD_PRELOAD=/opt/gpuslice/lib/libgpuslice.so",
            "-e GPUSLICE_DIR=/run/gpuslice",
            "-e GPUSLICE_TENANT=team-a",
        ] {
            assert!(line.contains(expected), "{expected} not in {line}");
        }
        // Each mount and variable once, flags before values.
        assert_eq!(flags.iter().filter(|f| *f == "--mount").count(), 5);
        assert_eq!(flags.iter().filter(|f| *f == "-e").count(), 3);
    }

    #[test]
    fn odd_words_are_quoted_for_a_shell() {
        let words = [
            "-e".to_string(),
            "A=b c".into(),
            "it's".into(),
            String::new(),
        ];
        assert_eq!(shell_line(&words), r"-e 'A=b c' 'it'\''s' ''");
    }

    #[test]
    fn the_list_shows_each_quota_and_its_per_gpu_limits() {
        let gpu = GpuUuid([7; 16]);
        let other = GpuUuid([8; 16]);
        let rows = [
            Row {
                name: "team-a".into(),
                quota: Ok(Some(TenantQuota {
                    defaults: Limits {
                        memory_bytes: Some(4 << 30),
                        compute_share_permille: Some(300),
                        compute_limit_permille: None,
                        priority: Some(Priority::High),
                    },
                    per_gpu: vec![
                        (
                            gpu,
                            Limits {
                                memory_bytes: Some(1 << 30),
                                ..Limits::default()
                            },
                        ),
                        (
                            other,
                            Limits {
                                memory_bytes: Some(2 << 30),
                                compute_share_permille: Some(100),
                                compute_limit_permille: Some(250),
                                priority: Some(Priority::Low),
                            },
                        ),
                    ],
                })),
                made_by: MadeBy::TenantCreate,
                live: Ok(2),
            },
            Row {
                name: "broken".into(),
                quota: Err("bad magic".into()),
                made_by: MadeBy::Other,
                live: Ok(0),
            },
        ];
        let text = render(&rows);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[1],
            [
                "team-a", "4", "GiB", "30%", "-", "high", "2", "tenant", "create"
            ],
            "{text}"
        );
        assert_eq!(
            lines[2],
            ["1", "GiB", "on", gpu.to_string().as_str()],
            "{text}"
        );
        // A GPU's own compute settings are shown with its memory: a DRA claim's share is
        // on its GPU alone, and the row above said "-".
        assert_eq!(
            text.lines().nth(3).map(str::trim),
            Some(format!("2 GiB on {other}, share 10%, limit 25%, priority low").as_str()),
            "{text}"
        );
        assert!(text.contains("error: bad magic"), "{text}");
        assert!(render(&[]).contains("(no tenants)"));
    }
}
