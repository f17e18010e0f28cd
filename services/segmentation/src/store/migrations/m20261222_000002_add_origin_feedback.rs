use sea_orm_migration::prelude::*;

/// Feedback sums per origin (`domain::feedback::FeedbackSums`, encoded), next to the purchase
/// aggregates so merges and unmerges move them the same way. Null for an origin without
/// feedback.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum OriginAggregates {
    Table,
    Feedback,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(OriginAggregates::Table)
                    .add_column(ColumnDef::new(OriginAggregates::Feedback).blob().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(OriginAggregates::Table)
                    .drop_column(OriginAggregates::Feedback)
                    .to_owned(),
            )
            .await
    }
}
