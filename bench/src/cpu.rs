//! CPU time by process over a measured window, from `/proc/<pid>/stat` (Linux): the figure every
//! change to the hot path is judged by, because on a shared machine turns/s moves with whatever
//! else runs while CPU milliseconds per turn do not.
//!
//! Three kinds of sources, each under a label:
//! - `--cpu-pids edge=PID,worker=PID`: those processes (a label given twice sums its pids);
//! - `--cpu-procs nats-server,postgres`: every process whose name (`comm`) is that, at each
//!   snapshot. Each process counts its own time and that of its children it has reaped
//!   (`cutime` + `cstime`), so a PostgreSQL backend that exits during the window is still
//!   counted: its time moves to the postmaster's children time when it is reaped. On a shared
//!   machine this includes every database's backends and PostgreSQL's background writers;
//! - `--cpu-database-url URL`: label `postgres_db`, the backends connected to that database
//!   (from `pg_stat_activity`) at the start and at the end of the window. A backend that exits
//!   inside the window loses its time: the edge and the worker keep pooled connections, so few do.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context as _};
use serde::Serialize;

/// What to measure.
#[derive(Debug, Clone, Default)]
pub(crate) struct Targets {
    pids: Vec<(String, u32)>,
    names: Vec<String>,
    database_url: Option<String>,
}

/// The label of the backends of `--cpu-database-url`.
pub(crate) const DATABASE_LABEL: &str = "postgres_db";

impl Targets {
    /// `pids`: `label=PID,label=PID`; `names`: `name,name`.
    pub(crate) fn parse(
        pids: Option<&str>,
        names: Option<&str>,
        database_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut targets = Self {
            database_url,
            ..Self::default()
        };
        for pair in pids.unwrap_or_default().split(',').map(str::trim) {
            if pair.is_empty() {
                continue;
            }
            let Some((label, pid)) = pair.split_once('=') else {
                bail!("--cpu-pids takes label=PID pairs, not {pair:?}");
            };
            let pid: u32 = pid
                .trim()
                .parse()
                .with_context(|| format!("--cpu-pids: {pid:?} is not a process id"))?;
            targets.pids.push((label.trim().to_owned(), pid));
        }
        for name in names.unwrap_or_default().split(',').map(str::trim) {
            if !name.is_empty() {
                targets.names.push(name.to_owned());
            }
        }
        Ok(targets)
    }

    /// The same targets and one more process under `label`.
    pub(crate) fn with_pid(mut self, label: &str, pid: u32) -> Self {
        self.pids.push((label.to_owned(), pid));
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.names.is_empty() && self.database_url.is_none()
    }

    /// Reads every source now.
    pub(crate) async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut ticks: BTreeMap<String, u64> = BTreeMap::new();
        for (label, pid) in &self.pids {
            let stat = read_stat(*pid)
                .with_context(|| format!("/proc/{pid}/stat ({label}) is not readable"))?;
            *ticks.entry(label.clone()).or_default() += stat.own + stat.children;
        }
        if !self.names.is_empty() {
            for (name, total) in ticks_by_name(&self.names) {
                *ticks.entry(name).or_default() += total;
            }
        }
        let mut backends = HashMap::new();
        if let Some(url) = &self.database_url {
            for pid in database_backends(url).await? {
                // A backend that exited since the query: nothing to read.
                if let Some(stat) = read_stat(pid) {
                    backends.insert(pid, stat.own);
                }
            }
        }
        Ok(Snapshot { ticks, backends })
    }
}

/// CPU ticks (utime + stime) by label at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    ticks: BTreeMap<String, u64>,
    /// The database's backends: ticks by pid.
    backends: HashMap<u32, u64>,
}

/// CPU milliseconds per turn by label, and `all`: every label but `postgres_db` (a part of
/// `postgres` when both are measured).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PerTurn {
    pub(crate) cpu_ms_per_turn: BTreeMap<String, f64>,
    pub(crate) cpu_ms_total: BTreeMap<String, f64>,
}

impl PerTurn {
    /// `label 0.123, label 0.456, all 0.579`.
    pub(crate) fn line(&self) -> String {
        self.cpu_ms_per_turn
            .iter()
            .map(|(label, ms)| format!("{label} {ms:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Snapshot {
    /// What was spent between `self` and `later`, per turn of `turns`.
    pub(crate) fn per_turn(&self, later: &Self, turns: u64) -> PerTurn {
        let ms_per_tick = 1000.0 / ticks_per_second();
        let mut total: BTreeMap<String, f64> = BTreeMap::new();
        for (label, after) in &later.ticks {
            let before = self.ticks.get(label).copied().unwrap_or_default();
            total.insert(
                label.clone(),
                after.saturating_sub(before) as f64 * ms_per_tick,
            );
        }
        let all: f64 = total.values().sum();
        if !total.is_empty() {
            total.insert("all".to_owned(), all);
        }
        if !later.backends.is_empty() || !self.backends.is_empty() {
            let spent: u64 = later
                .backends
                .iter()
                .map(|(pid, after)| {
                    after.saturating_sub(self.backends.get(pid).copied().unwrap_or_default())
                })
                .sum();
            total.insert(DATABASE_LABEL.to_owned(), spent as f64 * ms_per_tick);
        }
        let turns = turns.max(1) as f64;
        PerTurn {
            cpu_ms_per_turn: total
                .iter()
                .map(|(label, ms)| (label.clone(), ms / turns))
                .collect(),
            cpu_ms_total: total,
        }
    }
}

struct Stat {
    /// utime + stime.
    own: u64,
    /// cutime + cstime: reaped children.
    children: u64,
}

/// `/proc/<pid>/stat`: the process name, and its times in clock ticks.
fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|(_, stat)| stat)
}

fn parse_stat(text: &str) -> Option<(&str, Stat)> {
    // `pid (comm) state ppid …`: the name may hold spaces and parentheses; it ends at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?;
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // Fields 14–17 of proc(5) (utime, stime, cutime, cstime); `fields[0]` is field 3 (state).
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some((
        name,
        Stat {
            own: field(14)? + field(15)?,
            children: field(16)? + field(17)?,
        },
    ))
}

/// Ticks (own and reaped children) of every process named one of `names`, by name.
fn ticks_by_name(names: &[String]) -> BTreeMap<String, u64> {
    let mut ticks: BTreeMap<String, u64> = names.iter().map(|n| (n.clone(), 0)).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((name, stat)) = parse_stat(&text) {
            if let Some(total) = ticks.get_mut(name) {
                *total += stat.own + stat.children;
            }
        }
    }
    ticks
}

/// The pids of the backends connected to the database of `url`.
async fn database_backends(url: &str) -> anyhow::Result<Vec<u32>> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("--cpu-database-url: connect")?;
    let pids: Vec<i32> = sqlx::query_scalar!(
        r#"SELECT pid AS "pid!" FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()"#,
    )
    .fetch_all(&mut conn)
    .await
    .context("--cpu-database-url: pg_stat_activity")?;
    let _ = conn.close().await;
    Ok(pids
        .into_iter()
        .filter_map(|pid| u32::try_from(pid).ok())
        .collect())
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on (the kernel's `USER_HZ`).
fn ticks_per_second() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_name() {
        let line = "4242 (postgres: a) b) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    120 30 7 3 20 0 1 0 100 1000 10 18446744073709551615";
        let (name, stat) = parse_stat(line).unwrap();
        assert_eq!(name, "postgres: a) b");
        assert_eq!(stat.own, 150);
        assert_eq!(stat.children, 10);
    }

    #[test]
    fn targets_parse_labels_and_names() {
        let targets = Targets::parse(
            Some("edge=12, worker=34"),
            Some("nats-server,postgres"),
            None,
        )
        .unwrap();
        assert_eq!(
            targets.pids,
            vec![("edge".to_owned(), 12), ("worker".to_owned(), 34)]
        );
        assert_eq!(targets.names, vec!["nats-server", "postgres"]);
        assert!(Targets::parse(Some("edge"), None, None).is_err());
        assert!(Targets::parse(Some("edge=x"), None, None).is_err());
        assert!(Targets::parse(None, None, None).unwrap().is_empty());
    }

    #[test]
    fn per_turn_divides_the_difference() {
        let before = Snapshot {
            ticks: [("edge".to_owned(), 100), ("postgres".to_owned(), 50)].into(),
            backends: [(1, 10), (2, 5)].into(),
        };
        let after = Snapshot {
            ticks: [("edge".to_owned(), 300), ("postgres".to_owned(), 450)].into(),
            // Backend 2 exited; backend 3 started in the window.
            backends: [(1, 30), (3, 20)].into(),
        };
        let per_turn = before.per_turn(&after, 1000);
        assert!((per_turn.cpu_ms_per_turn["edge"] - 2.0).abs() < 1e-9);
        assert!((per_turn.cpu_ms_per_turn["postgres"] - 4.0).abs() < 1e-9);
        assert!((per_turn.cpu_ms_per_turn["all"] - 6.0).abs() < 1e-9);
        assert!((per_turn.cpu_ms_per_turn[DATABASE_LABEL] - 0.4).abs() < 1e-9);
    }
}
