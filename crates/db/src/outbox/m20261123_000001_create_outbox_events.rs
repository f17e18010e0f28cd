use sea_orm_migration::prelude::*;

/// The outbox table of a service: events appended in the same transaction as the change they
/// announce, later given a gap-free position by the sequencer.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum OutboxEvents {
    Table,
    Id,
    Position,
    TenantId,
    EventType,
    Subject,
    Payload,
    CreateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OutboxEvents::Table)
                    .if_not_exists()
                    // Insertion order, only a tie-breaker for the sequencer. A single-column key:
                    // SQLite only auto-increments an `INTEGER PRIMARY KEY`.
                    .col(
                        ColumnDef::new(OutboxEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    // NULL until the sequencer assigns it; unique within the table.
                    .col(ColumnDef::new(OutboxEvents::Position).big_integer().null())
                    .col(ColumnDef::new(OutboxEvents::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(OutboxEvents::EventType).string_len(128).not_null())
                    .col(ColumnDef::new(OutboxEvents::Subject).string_len(256).not_null())
                    .col(ColumnDef::new(OutboxEvents::Payload).blob().not_null())
                    .col(
                        ColumnDef::new(OutboxEvents::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // Positions are unique per table; the sequencer reads the highest through this index.
        manager
            .create_index(
                Index::create()
                    .name("outbox_events_position")
                    .table(OutboxEvents::Table)
                    .col(OutboxEvents::Position)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // Subscribers: `WHERE tenant_id = ? AND position > ? ORDER BY position`.
        manager
            .create_index(
                Index::create()
                    .name("outbox_events_tenant_position")
                    .table(OutboxEvents::Table)
                    .col(OutboxEvents::TenantId)
                    .col(OutboxEvents::Position)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // The sequencer: `WHERE position IS NULL ORDER BY id`. Partial, so it stays as small as
        // the backlog however long the log grows.
        manager
            .create_index(
                Index::create()
                    .name("outbox_events_unpositioned")
                    .table(OutboxEvents::Table)
                    .col(OutboxEvents::Id)
                    .and_where(Expr::col(OutboxEvents::Position).is_null())
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OutboxEvents::Table).to_owned())
            .await
    }
}
