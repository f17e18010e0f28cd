use sea_orm_migration::prelude::*;

/// The cursors of the feeds a service follows. `if_not_exists`: segmentation created the same
/// table in its own first migration (with a 64-character source, enough for its feeds).
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FeedCursors {
    Table,
    Source,
    Position,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(FeedCursors::Table)
                    .if_not_exists()
                    // Text: a source may name a tenant (loyalty's `expiring-soon/{tenant}`).
                    .col(
                        ColumnDef::new(FeedCursors::Source)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(FeedCursors::Position).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(FeedCursors::Table).if_exists().to_owned())
            .await
    }
}
