//! Operator commands (SPEC §6, §9): `worker setup [--apply]`, `worker seed`, `worker replay …` and
//! `worker dead-letters list|show`. Each exits non-zero on failure. Only `setup` creates or
//! migrates a database or changes a stream; `dead-letters` and `replay --dry-run` change nothing.
//! Command output goes to stdout, logs to stderr.

use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use shared::dead_letters;
use shared::ids::ThreadId;
use shared::jetstream::{FieldDrift, OnDrift, StreamSetup};
use shared::replay::{ReplayRequest, Replayer, Selection};

use crate::Settings;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Create the database if missing, apply the migrations, create the missing streams and the
    /// durable consumer. Streams whose settings differ from the configured ones are listed, and
    /// the command fails, unless --apply updates them. For a deploy job.
    Setup(SetupArgs),
    /// Load the demo shop's data (customers, orders 1001-1010, invoices, FAQ) that the built-in
    /// demo agents use. Idempotent. The database must exist (`worker setup`).
    Seed,
    /// Re-drive retained messages from JetStream (e.g. after a model-provider outage).
    Replay(ReplayArgs),
    /// Inspect the dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
}

#[derive(Debug, Clone, clap::Args)]
pub struct SetupArgs {
    /// Update existing streams whose settings differ from the configured ones.
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["thread", "since", "dead_letters"])))]
pub struct ReplayArgs {
    /// Every retained message of this thread.
    #[arg(long)]
    pub thread: Option<String>,
    /// Every retained message stored at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// With --since: only messages stored before this time (RFC 3339).
    #[arg(long, requires = "since")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Every dead letter not re-driven yet.
    #[arg(long)]
    pub dead_letters: bool,
    /// Only report what would be re-driven.
    #[arg(long)]
    pub dry_run: bool,
    /// Also re-drive messages that were already processed.
    #[arg(long)]
    pub force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeadLettersCommand {
    /// One line per dead letter: id, thread id, message id, attempts, reason.
    List {
        /// Also list dead letters that were already re-driven.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead letter, including each failed attempt.
    Show { id: uuid::Uuid },
}

pub async fn run(command: &Command, settings: &Settings) -> anyhow::Result<()> {
    match command {
        Command::Setup(args) => setup(args, settings).await,
        Command::Seed => {
            let db = shared::db::connect_existing(&settings.database).await?;
            crate::demo_seed::seed(&db).await?;
            println!("The demo shop's data is loaded.");
            Ok(())
        }
        Command::Replay(args) => {
            let db = shared::db::connect_existing(&settings.database).await?;
            replay(args, settings, &db).await
        }
        Command::DeadLetters(command) => {
            let db = shared::db::connect_existing(&settings.database).await?;
            inspect_dead_letters(command, &db).await
        }
    }
}

async fn inspect_dead_letters(
    command: &DeadLettersCommand,
    db: &sqlx::PgPool,
) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::List { all, limit, json } => {
            let letters = dead_letters::list(db, *all, *limit)
                .await
                .context("Failed to read the dead letters")?;
            if *json {
                println!("{}", serde_json::to_string(&letters)?);
            } else {
                println!("ID\tTHREAD\tMESSAGE\tATTEMPTS\tREASON");
                for letter in &letters {
                    println!(
                        "{}\t{}\t{}\t{}\t{}{}",
                        letter.id,
                        letter.thread_id,
                        letter.message_id,
                        letter.attempts,
                        letter.reason,
                        if letter.replayed_at.is_some() {
                            " (replayed)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(())
        }
        DeadLettersCommand::Show { id } => {
            let letter = dead_letters::get(db, *id)
                .await
                .context("Failed to read the dead letter")?
                .with_context(|| format!("no dead letter with id {id}"))?;
            println!("{}", serde_json::to_string_pretty(&letter)?);
            Ok(())
        }
    }
}

async fn replay(args: &ReplayArgs, settings: &Settings, db: &sqlx::PgPool) -> anyhow::Result<()> {
    let selection = match (&args.thread, args.since, args.dead_letters) {
        (Some(thread), None, false) => Selection::Thread(
            ThreadId::parse(thread.as_str()).map_err(|e| anyhow::anyhow!("--thread: {e}"))?,
        ),
        (None, Some(since), false) => Selection::Window {
            since,
            until: args.until,
        },
        (None, None, true) => Selection::DeadLetters,
        _ => anyhow::bail!("choose one of --thread, --since or --dead-letters"),
    };
    let nats = shared::jetstream::connect(&settings.nats, "worker-replay").await?;
    let jetstream = shared::jetstream::context(nats.clone(), Duration::from_secs(10));
    // Replaying needs the streams as they are: it neither creates nor changes them.
    let (inbound, _) = shared::jetstream::open_streams(&jetstream, &settings.nats).await?;
    let subjects = settings.nats.subjects();
    let replayer = Replayer {
        jetstream: &jetstream,
        inbound: &inbound,
        db,
        subjects: &subjects,
    };
    let request = ReplayRequest {
        selection,
        dry_run: args.dry_run,
        force: args.force,
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} replaying [{bar:40}] {pos}/{len} messages")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = replayer
        .run(&request, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .await;
    bar.finish_and_clear();
    let summary = summary?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        for item in &summary.items {
            println!(
                "{:?}\t{}\tseq {}\t{}\t{:?}{}",
                item.action,
                item.thread_id,
                item.in_seq,
                item.message_id,
                item.state,
                item.new_seq
                    .map(|seq| format!(" → seq {seq}"))
                    .unwrap_or_default()
            );
        }
        println!("{}", summary.describe());
    }
    nats.flush().await.context("Failed to flush NATS")?;
    Ok(())
}

/// `worker setup [--apply]`: the database and its migrations, the streams, the durable consumer.
async fn setup(args: &SetupArgs, settings: &Settings) -> anyhow::Result<()> {
    let (_db, database) = shared::db::set_up(&settings.database).await?;
    println!(
        "database: {}",
        if database.created {
            "created"
        } else {
            "exists"
        }
    );
    if database.applied.is_empty() {
        println!("migrations: up to date");
    }
    for migration in &database.applied {
        println!("migration applied: {migration}");
    }

    let nats = shared::jetstream::connect(&settings.nats, "worker-setup").await?;
    let jetstream = shared::jetstream::context(nats.clone(), Duration::from_secs(10));
    let on_drift = if args.apply {
        OnDrift::Apply
    } else {
        OnDrift::Report
    };
    let mut drifted = false;
    let mut inbound = None;
    for config in shared::jetstream::stream_configs(&settings.nats) {
        let name = config.name.clone();
        let (stream, state) =
            shared::jetstream::ensure_stream(&jetstream, config, on_drift).await?;
        match state {
            StreamSetup::Created => println!("stream {name}: created"),
            StreamSetup::UpToDate => println!("stream {name}: up to date"),
            StreamSetup::Drifted(drift) => {
                drifted = true;
                println!("stream {name}: differs from the configured settings (left as it is)");
                print_drift(&drift);
            }
            StreamSetup::Updated(drift) => {
                println!("stream {name}: updated to the configured settings");
                print_drift(&drift);
                let is_inbound = name == settings.nats.subjects().inbound_stream();
                if is_inbound
                    && drift
                        .iter()
                        .any(|change| change.field == "num_replicas" && change.actual == "1")
                {
                    println!(
                        "  running edges and workers stop using store conditions at their next reading of the stream, every {:?}; for no window at all, stop them before applying (docs/operations.md, NATS)",
                        shared::jetstream::REPLICAS_REFRESH
                    );
                }
            }
        }
        inbound.get_or_insert(stream);
    }
    let inbound = inbound.context("the inbound stream")?;
    let ack_wait = Duration::from_secs(settings.worker.ack_wait_secs);
    shared::jetstream::ensure_workers_consumer(&inbound, &settings.nats, ack_wait).await?;
    println!(
        "consumer {}: ready",
        settings.nats.subjects().workers_consumer()
    );
    nats.flush().await.context("Failed to flush NATS")?;
    if drifted {
        anyhow::bail!(
            "stream settings differ from the configured ones (listed above); rerun with `worker setup --apply` to update them"
        );
    }
    Ok(())
}

fn print_drift(drift: &[FieldDrift]) {
    for FieldDrift {
        field,
        configured,
        actual,
    } in drift
    {
        println!("  {field}: configured {configured}, actual {actual}");
    }
}
