use sea_orm_migration::prelude::*;

/// Customers, their identities (unique per tenant), tags and attributes for filtering, merge
/// records, consent history and tenant settings.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Customers {
    Table,
    TenantId,
    Id,
    State,
    MergedInto,
    Kind,
    DisplayName,
    SearchName,
    RelationshipLevel,
    Profile,
    CreateTime,
    UpdateTime,
    PurgeTime,
    Revision,
}

#[derive(DeriveIden)]
enum CustomerIdentities {
    Table,
    TenantId,
    Kind,
    Value,
    CustomerId,
}

#[derive(DeriveIden)]
enum CustomerTags {
    Table,
    TenantId,
    CustomerId,
    Tag,
}

#[derive(DeriveIden)]
enum CustomerAttributes {
    Table,
    TenantId,
    CustomerId,
    Key,
    ValueText,
}

#[derive(DeriveIden)]
enum CustomerMerges {
    Table,
    TenantId,
    MergedId,
    SurvivorId,
    SurvivorBefore,
    MergedBefore,
    SurvivorRevisionAfter,
    CreateTime,
}

#[derive(DeriveIden)]
enum ConsentChanges {
    Table,
    TenantId,
    CustomerId,
    Purpose,
    Sequence,
    Status,
    Source,
    ChangeTime,
}

#[derive(DeriveIden)]
enum TenantSettings {
    Table,
    TenantId,
    DefaultRegion,
    HomeCountry,
    DeletedRetentionDays,
    UpdateTime,
}

fn tenant(column: impl IntoIden) -> ColumnDef {
    ColumnDef::new(column).string_len(64).not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Customers::Table)
                    .if_not_exists()
                    .col(tenant(Customers::TenantId))
                    .col(ColumnDef::new(Customers::Id).uuid().not_null())
                    .col(ColumnDef::new(Customers::State).string_len(16).not_null())
                    .col(ColumnDef::new(Customers::MergedInto).uuid().null())
                    .col(ColumnDef::new(Customers::Kind).string_len(32).not_null())
                    .col(ColumnDef::new(Customers::DisplayName).string_len(800).not_null())
                    .col(ColumnDef::new(Customers::SearchName).string_len(800).not_null())
                    .col(
                        ColumnDef::new(Customers::RelationshipLevel)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Customers::Profile).blob().not_null())
                    .col(
                        ColumnDef::new(Customers::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Customers::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Customers::PurgeTime)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(Customers::Revision).big_integer().not_null())
                    .primary_key(Index::create().col(Customers::TenantId).col(Customers::Id))
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            (
                "customers_by_state_create_time",
                vec![Customers::TenantId, Customers::State, Customers::CreateTime],
            ),
            (
                "customers_by_state_update_time",
                vec![Customers::TenantId, Customers::State, Customers::UpdateTime],
            ),
            (
                "customers_by_state_search_name",
                vec![Customers::TenantId, Customers::State, Customers::SearchName],
            ),
        ] {
            let mut index = Index::create()
                .name(name)
                .table(Customers::Table)
                .if_not_exists()
                .to_owned();
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(CustomerIdentities::Table)
                    .if_not_exists()
                    .col(tenant(CustomerIdentities::TenantId))
                    .col(ColumnDef::new(CustomerIdentities::Kind).string_len(16).not_null())
                    .col(
                        ColumnDef::new(CustomerIdentities::Value)
                            .string_len(300)
                            .not_null(),
                    )
                    .col(ColumnDef::new(CustomerIdentities::CustomerId).uuid().not_null())
                    .primary_key(
                        Index::create()
                            .col(CustomerIdentities::TenantId)
                            .col(CustomerIdentities::Kind)
                            .col(CustomerIdentities::Value),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("customer_identities_by_customer")
                    .table(CustomerIdentities::Table)
                    .col(CustomerIdentities::TenantId)
                    .col(CustomerIdentities::CustomerId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CustomerTags::Table)
                    .if_not_exists()
                    .col(tenant(CustomerTags::TenantId))
                    .col(ColumnDef::new(CustomerTags::CustomerId).uuid().not_null())
                    .col(ColumnDef::new(CustomerTags::Tag).string_len(256).not_null())
                    .primary_key(
                        Index::create()
                            .col(CustomerTags::TenantId)
                            .col(CustomerTags::CustomerId)
                            .col(CustomerTags::Tag),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("customer_tags_by_tag")
                    .table(CustomerTags::Table)
                    .col(CustomerTags::TenantId)
                    .col(CustomerTags::Tag)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CustomerAttributes::Table)
                    .if_not_exists()
                    .col(tenant(CustomerAttributes::TenantId))
                    .col(ColumnDef::new(CustomerAttributes::CustomerId).uuid().not_null())
                    .col(ColumnDef::new(CustomerAttributes::Key).string_len(64).not_null())
                    .col(ColumnDef::new(CustomerAttributes::ValueText).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(CustomerAttributes::TenantId)
                            .col(CustomerAttributes::CustomerId)
                            .col(CustomerAttributes::Key),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("customer_attributes_by_key")
                    .table(CustomerAttributes::Table)
                    .col(CustomerAttributes::TenantId)
                    .col(CustomerAttributes::Key)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CustomerMerges::Table)
                    .if_not_exists()
                    .col(tenant(CustomerMerges::TenantId))
                    .col(ColumnDef::new(CustomerMerges::MergedId).uuid().not_null())
                    .col(ColumnDef::new(CustomerMerges::SurvivorId).uuid().not_null())
                    .col(ColumnDef::new(CustomerMerges::SurvivorBefore).blob().not_null())
                    .col(ColumnDef::new(CustomerMerges::MergedBefore).blob().not_null())
                    .col(
                        ColumnDef::new(CustomerMerges::SurvivorRevisionAfter)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(CustomerMerges::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(CustomerMerges::TenantId)
                            .col(CustomerMerges::MergedId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ConsentChanges::Table)
                    .if_not_exists()
                    .col(tenant(ConsentChanges::TenantId))
                    .col(ColumnDef::new(ConsentChanges::CustomerId).uuid().not_null())
                    .col(ColumnDef::new(ConsentChanges::Purpose).string_len(64).not_null())
                    .col(ColumnDef::new(ConsentChanges::Sequence).uuid().not_null())
                    .col(ColumnDef::new(ConsentChanges::Status).string_len(16).not_null())
                    .col(ColumnDef::new(ConsentChanges::Source).string_len(256).not_null())
                    .col(
                        ColumnDef::new(ConsentChanges::ChangeTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ConsentChanges::TenantId)
                            .col(ConsentChanges::CustomerId)
                            .col(ConsentChanges::Purpose)
                            .col(ConsentChanges::Sequence),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TenantSettings::Table)
                    .if_not_exists()
                    .col(tenant(TenantSettings::TenantId))
                    .col(
                        ColumnDef::new(TenantSettings::DefaultRegion)
                            .string_len(8)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantSettings::HomeCountry)
                            .string_len(8)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantSettings::DeletedRetentionDays)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TenantSettings::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(Index::create().col(TenantSettings::TenantId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Customers::Table.into_iden(),
            CustomerIdentities::Table.into_iden(),
            CustomerTags::Table.into_iden(),
            CustomerAttributes::Table.into_iden(),
            CustomerMerges::Table.into_iden(),
            ConsentChanges::Table.into_iden(),
            TenantSettings::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
