//! Database plumbing shared by the services.
//!
//! Each service owns its data: on PostgreSQL it gets its own schema (its connections set
//! `search_path` to it), on the embedded default its own SQLite file under the data directory.
//! Each runs its own migrations at start. Every table leads with `tenant_id`.

pub mod feed_cursor;
pub mod idempotency;
pub mod outbox;

use std::path::PathBuf;
use std::time::Duration;

use crm_error::ApiError;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnAcquireErr, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction,
    DbErr, RuntimeErr, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

pub use sea_orm;
pub use sea_orm_migration;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// A PostgreSQL URL (`DATABASE_URL`); `None` selects SQLite under `data_dir`.
    pub url: Option<String>,
    /// Directory of the SQLite files of the embedded default.
    pub data_dir: PathBuf,
    /// Pool size per service on PostgreSQL. SQLite always uses one connection per file, so
    /// writers queue in the pool instead of failing with SQLITE_BUSY.
    pub max_connections: u32,
    /// How long to wait for a connection, at start and per request.
    pub connect_timeout: Duration,
}

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl DbSettings {
    pub fn engine(&self) -> Engine {
        if self.url.is_some() {
            Engine::Postgres
        } else {
            Engine::Sqlite
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot connect to the {schema} database: {source}")]
    Connect { schema: String, source: DbErr },
    #[error("cannot create schema {schema}: {source}")]
    CreateSchema { schema: String, source: DbErr },
    #[error("schema name {0:?} must be lower-case letters, digits and underscores")]
    SchemaName(String),
}

/// Connects the service that owns `schema` to its database, creating the schema (PostgreSQL)
/// or file (SQLite) when missing.
pub async fn connect(settings: &DbSettings, schema: &str) -> Result<DatabaseConnection, DbSetupError> {
    if schema.is_empty()
        || !schema
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
    {
        return Err(DbSetupError::SchemaName(schema.to_owned()));
    }
    match &settings.url {
        Some(url) => connect_postgres(settings, url, schema).await,
        None => connect_sqlite(settings, schema).await,
    }
}

async fn connect_postgres(
    settings: &DbSettings,
    url: &str,
    schema: &str,
) -> Result<DatabaseConnection, DbSetupError> {
    let connect_error = |source| DbSetupError::Connect {
        schema: schema.to_owned(),
        source,
    };
    let mut bootstrap_options = ConnectOptions::new(url);
    bootstrap_options
        .max_connections(1)
        .connect_timeout(settings.connect_timeout)
        .sqlx_logging(false);
    let bootstrap = Database::connect(bootstrap_options)
        .await
        .map_err(connect_error)?;
    // Several processes may start at once; a concurrent creator makes ours fail on the catalog's
    // unique index, and the schema then exists, which is all we need.
    if let Err(source) = bootstrap
        .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .await
    {
        let exists = bootstrap
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT 1 FROM pg_namespace WHERE nspname = $1",
                [schema.into()],
            ))
            .await
            .map_err(connect_error)?
            .is_some();
        if !exists {
            return Err(DbSetupError::CreateSchema {
                schema: schema.to_owned(),
                source,
            });
        }
    }
    let _ = bootstrap.close().await;

    let mut options = ConnectOptions::new(url);
    options
        .max_connections(settings.max_connections)
        .min_connections(0)
        .connect_timeout(settings.connect_timeout)
        .acquire_timeout(settings.connect_timeout)
        .set_schema_search_path(schema)
        .set_application_name(format!("crm-{schema}"))
        .sqlx_logging(false)
        // sqlx prepares every statement; after five runs PostgreSQL may switch to a generic
        // plan costed against the table as it was then. Tables here start empty, so that plan is
        // a sequential scan, kept forever: an import slowed from 10,000 to 500 rows/s as the
        // identities table grew. Custom plans see the table's current size every time.
        .map_sqlx_postgres_opts(|postgres| postgres.options([("plan_cache_mode", "force_custom_plan")]));
    Database::connect(options).await.map_err(connect_error)
}

/// How long a statement may wait for the embedded database's single connection.
const SQLITE_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect_sqlite(settings: &DbSettings, schema: &str) -> Result<DatabaseConnection, DbSetupError> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| DbSetupError::DataDir {
        path: settings.data_dir.clone(),
        source,
    })?;
    let path = settings.data_dir.join(format!("{schema}.db"));
    let mut options = ConnectOptions::new(format!("sqlite://{}?mode=rwc", path.display()));
    options
        .max_connections(1)
        .min_connections(1)
        .connect_timeout(settings.connect_timeout)
        // The one connection is a queue, not a remote server that may be down: waiting for it
        // is waiting for the statements ahead, as a writer waits for the lock. Under a bulk
        // import plus segmentation's fetches a debug build on a loaded CI machine waited more
        // than the 5 s connect timeout, and a whole 1,000-row import batch failed UNAVAILABLE.
        .acquire_timeout(settings.connect_timeout.max(SQLITE_QUEUE_TIMEOUT))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|sqlite: SqliteConnectOptions| {
            sqlite
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: an acknowledged commit survives a crash of the process and of the machine.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
        });
    Database::connect(options)
        .await
        .map_err(|source| DbSetupError::Connect {
            schema: schema.to_owned(),
            source,
        })
}

/// Whether the store answers a trivial query; drives the service's health status.
pub async fn ping(db: &DatabaseConnection) -> bool {
    db.execute_unprepared("SELECT 1").await.is_ok()
}

/// Whether the error means the database could not be reached (so the request may be retried).
pub fn is_unavailable(error: &DbErr) -> bool {
    match error {
        DbErr::ConnectionAcquire(ConnAcquireErr::Timeout | ConnAcquireErr::ConnectionClosed) => true,
        DbErr::Conn(runtime) | DbErr::Exec(runtime) | DbErr::Query(runtime) => match runtime {
            RuntimeErr::SqlxError(sqlx_error) => matches!(
                sqlx_error.as_ref(),
                sea_orm::sqlx::Error::Io(_)
                    | sea_orm::sqlx::Error::PoolTimedOut
                    | sea_orm::sqlx::Error::PoolClosed
                    | sea_orm::sqlx::Error::WorkerCrashed
            ),
            RuntimeErr::Internal(_) => false,
        },
        _ => false,
    }
}

/// Whether the error is a unique-constraint violation.
pub fn is_unique_violation(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Begins a transaction that will write. On SQLite it takes the write lock at BEGIN
/// (IMMEDIATE), queueing behind other writers under the busy timeout: a deferred transaction
/// that read first would fail at once with SQLITE_BUSY when upgrading behind another writer.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
}

/// Maps a store failure to the API: UNAVAILABLE (retryable) when the database is out of
/// reach, INTERNAL otherwise.
pub fn api_error(error: DbErr) -> ApiError {
    if is_unavailable(&error) {
        ApiError::Unavailable {
            reason: "DATABASE_UNAVAILABLE",
            message: "the database is unavailable".into(),
        }
    } else {
        ApiError::internal(format!("database error: {error}"))
    }
}
