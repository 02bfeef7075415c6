//! Replays a trace: feeds each traced tick's inputs to a fresh controller (one per process
//! and GPU, as the watcher had) and compares its decisions with the recorded ones. A trace
//! recorded before a change to the controller replays exactly as long as the change leaves
//! its decisions alone; the first tick where they differ is named.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gpuslice_ledger::TenantName;

use crate::policy::controller::{Controller, Followed};
use crate::trace::{FORMAT, Outcome, TickRecord, parse_tick};

/// What a replay went through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Processes (header lines) in the trace.
    pub processes: usize,
    /// Ticks replayed, and of those the ones decided (not quiet).
    pub ticks: usize,
    pub decided: usize,
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read the trace {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {what}")]
    Malformed {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error(
        "{path}, line {line}: the controller decided {field} = {replayed} where the trace \
         recorded {recorded}"
    )]
    Diverged {
        path: PathBuf,
        line: usize,
        field: &'static str,
        recorded: String,
        replayed: String,
    },
}

/// Replays the trace at `path`.
pub fn replay(path: &Path) -> Result<Replayed, ReplayError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    replay_text(&text).map_err(|(line, failure)| match failure {
        Failure::Malformed(what) => ReplayError::Malformed {
            path: path.to_path_buf(),
            line,
            what,
        },
        Failure::Diverged {
            field,
            recorded,
            replayed,
        } => ReplayError::Diverged {
            path: path.to_path_buf(),
            line,
            field,
            recorded,
            replayed,
        },
    })
}

/// Why a line failed.
#[derive(Debug, PartialEq)]
enum Failure {
    Malformed(String),
    Diverged {
        field: &'static str,
        recorded: String,
        replayed: String,
    },
}

/// Replays a trace's text; an error names the line (from 1).
fn replay_text(text: &str) -> Result<Replayed, (usize, Failure)> {
    let mut replayed = Replayed::default();
    let mut process: Option<(TenantName, HashMap<u32, Controller>)> = None;
    for (i, line) in text.lines().enumerate() {
        let at = |failure| (i + 1, failure);
        if line.starts_with('#') {
            let tenant = header_tenant(line).map_err(|what| at(Failure::Malformed(what)))?;
            process = Some((tenant, HashMap::new()));
            replayed.processes += 1;
            continue;
        }
        let Some((tenant, controllers)) = &mut process else {
            return Err(at(Failure::Malformed(
                "a tick before any header line".into(),
            )));
        };
        let tick = parse_tick(line).map_err(|what| at(Failure::Malformed(what)))?;
        let controller = controllers
            .entry(tick.gpu)
            .or_insert_with(|| Controller::new(tenant.clone()));
        replay_tick(controller, &tick).map_err(at)?;
        replayed.ticks += 1;
        replayed.decided += usize::from(tick.outcome.is_some());
    }
    Ok(replayed)
}

/// The tenant a header line names; refuses other formats.
fn header_tenant(line: &str) -> Result<TenantName, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.get(1..4) != Some(&["gpuslice", "trace", FORMAT][..]) {
        return Err(format!(
            "not a header of a gpuslice trace in format {FORMAT} (older traces lack the \
             controller's inputs and cannot be replayed): {line:?}"
        ));
    }
    let name = words
        .iter()
        .find_map(|w| w.strip_prefix("tenant="))
        .ok_or_else(|| format!("the header names no tenant: {line:?}"))?;
    TenantName::new(name).map_err(|e| e.to_string())
}

/// Feeds one tick to `controller` and compares what it decides with what was recorded.
fn replay_tick(controller: &mut Controller, tick: &TickRecord) -> Result<(), Failure> {
    let followed = controller.follow(&tick.observation, &tick.tenants);
    let (charged, outcome) = match (followed, &tick.outcome) {
        (Followed::Quiet { forgot: true }, None) => return Ok(()),
        (Followed::Charged(charged), Some(outcome)) => (charged, outcome),
        (followed, recorded) => {
            let step = |quiet: bool| if quiet { "quiet" } else { "decided" };
            return Err(Failure::Diverged {
                field: "step",
                recorded: step(recorded.is_none()).into(),
                replayed: match followed {
                    Followed::Quiet { forgot: false } => "quiet, changing nothing".into(),
                    other => step(matches!(other, Followed::Quiet { .. })).into(),
                },
            });
        }
    };
    let Outcome {
        charged_ns,
        rate,
        sharing,
        published_settings,
        refill,
        account,
        decision,
    } = *outcome;
    same("charged_ns", charged_ns, charged.charged_ns)?;
    same("rate", rate, charged.rate)?;
    same("sharing", sharing, charged.sharing)?;
    same(
        "publish_settings",
        published_settings,
        charged.publish_settings.is_some(),
    )?;
    if let Some(refill) = refill {
        same(
            "refill",
            refill.refilled_ns,
            charged.refilled_credit(refill.credit_ns, refill.consumed_ns, refill.elapsed_ns),
        )?;
    }
    let replayed = controller.decide(charged, account);
    same("open", decision.open, replayed.open)?;
    same("cap", decision.in_flight_cap, replayed.in_flight_cap)?;
    same(
        "publish_activity",
        decision.publish_activity,
        replayed.publish_activity,
    )?;
    same("next_tick", decision.next_tick, replayed.next_tick)
}

fn same<T: PartialEq + std::fmt::Debug>(
    field: &'static str,
    recorded: T,
    replayed: T,
) -> Result<(), Failure> {
    if recorded == replayed {
        Ok(())
    } else {
        Err(Failure::Diverged {
            field,
            recorded: format!("{recorded:?}"),
            replayed: format!("{replayed:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::controller::{Account, GateState, Observation, Poll};
    use crate::policy::standing::{PublishedSlot, PublishedTenant};
    use crate::trace::{COLUMNS, Refill, format_tick, header};
    use gpuslice_ledger::{Activity, ComputeSettings};

    /// A trace of a process limited to 30% alone, saturating, as a watcher records it:
    /// the controller's own decisions written after each tick.
    fn recorded(ticks: u64) -> String {
        let tenant = TenantName::new("t").unwrap();
        let mut controller = Controller::new(tenant.clone());
        let mut text = header(1, &tenant);
        let settings = ComputeSettings {
            limit_permille: Some(300),
            ..ComputeSettings::default()
        };
        let (mut credit, mut consumed, mut activity) = (0u64, 0u64, Activity::default());
        for tick in 1..=ticks {
            let now = tick * 500_000;
            let observation = Observation {
                now_ns: now,
                elapsed_ns: 500_000,
                slot: 0,
                poll: Poll {
                    busy: true,
                    finished: tick,
                    unfinished: 2,
                    counted_ns: Some(500_000),
                    ..Poll::default()
                },
                gate: GateState::default(),
                settings,
            };
            let tenants = vec![PublishedTenant {
                name: tenant.clone(),
                gpu_time_ns: consumed,
                credit_ns: credit,
                ceiling: None,
                slots: vec![PublishedSlot {
                    index: 0,
                    settings: Some(settings),
                    activity,
                }],
            }];
            let Followed::Charged(charged) = controller.follow(&observation, &tenants) else {
                panic!("a busy tick is never quiet");
            };
            consumed += charged.charged_ns;
            let refill = Refill {
                credit_ns: credit,
                consumed_ns: consumed,
                elapsed_ns: 500_000,
                refilled_ns: charged.refilled_credit(credit, consumed, 500_000),
            };
            credit = refill.refilled_ns;
            let account = Account {
                credit_ns: credit,
                consumed_ns: consumed,
                own_gpu_time_ns: consumed,
            };
            let outcome = Outcome {
                charged_ns: charged.charged_ns,
                rate: charged.rate,
                sharing: charged.sharing,
                published_settings: charged.publish_settings.is_some(),
                refill: Some(refill),
                account,
                decision: controller.decide(charged, account),
            };
            activity = outcome.decision.publish_activity.unwrap_or(activity);
            text.push('\n');
            format_tick(
                &mut text,
                &TickRecord {
                    gpu: 0,
                    poll_ns: 1,
                    observation,
                    tenants,
                    outcome: Some(outcome),
                },
            );
        }
        text
    }

    #[test]
    fn a_trace_replays_to_the_decisions_it_recorded() {
        let text = recorded(100);
        assert_eq!(
            replay_text(&text),
            Ok(Replayed {
                processes: 1,
                ticks: 100,
                decided: 100
            })
        );
    }

    #[test]
    fn a_changed_decision_is_named_with_its_line() {
        let text = recorded(100);
        let open = COLUMNS
            .split_whitespace()
            .position(|c| c == "open")
            .unwrap();
        // At 30% the gate closes once the burst is spent: say it stayed open.
        let (line, _) = text
            .lines()
            .enumerate()
            .skip(1)
            .find(|(_, l)| l.split(' ').nth(open) == Some("0"))
            .expect("a tick with the gate closed");
        let tampered: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == line {
                    let mut fields: Vec<&str> = l.split(' ').collect();
                    fields[open] = "1";
                    fields.join(" ")
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert_eq!(
            replay_text(&tampered.join("\n")),
            Err((
                line + 1,
                Failure::Diverged {
                    field: "open",
                    recorded: "true".into(),
                    replayed: "false".into()
                }
            ))
        );
    }

    #[test]
    fn traces_of_another_format_or_without_a_header_are_refused() {
        let old = "# gpuslice trace pid=1 fields: at_ns gpu\n1 0 500";
        let Err((1, Failure::Malformed(what))) = replay_text(old) else {
            panic!("an old trace replayed");
        };
        assert!(what.contains("format v3"), "{what}");
        let text = recorded(3);
        let headless: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            replay_text(&headless.join("\n")),
            Err((
                1,
                Failure::Malformed("a tick before any header line".into())
            ))
        );
    }
}
