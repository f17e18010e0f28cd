use sea_orm_migration::prelude::*;

/// What earning from purchase events needs: when each tenant's program started (purchases made
/// before it earn nothing), and the first purchase each customer made, as the purchase
/// follower first saw it, which a first-purchase campaign (an opening promotion) and the
/// referral bonus check. A first purchase is kept whether or not it earned points (it may
/// predate the program), so a customer's second purchase never counts as a first.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Programs {
    Table,
    StartTime,
}

#[derive(DeriveIden, Clone, Copy)]
enum FirstPurchases {
    Table,
    TenantId,
    CustomerId,
    PurchaseId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Null for a program set before this column existed: all its purchases earn.
        manager
            .alter_table(
                Table::alter()
                    .table(Programs::Table)
                    .add_column(
                        ColumnDef::new(Programs::StartTime)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(FirstPurchases::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(FirstPurchases::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(FirstPurchases::CustomerId).text().not_null())
                    .col(ColumnDef::new(FirstPurchases::PurchaseId).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(FirstPurchases::TenantId)
                            .col(FirstPurchases::CustomerId),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(FirstPurchases::Table).if_exists().to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Programs::Table)
                    .drop_column(Programs::StartTime)
                    .to_owned(),
            )
            .await
    }
}
