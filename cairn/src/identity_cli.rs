//! `cairn tenants`, `cairn users` and `cairn token`: identity administration
//! straight on the store, with the master key, for an operator who holds
//! the data but has no running server or password at hand.
//!
//! The stores are found exactly as `cairn up` finds them, and the master key
//! too, except that a missing key is an error, never a new key: a new key
//! could not open the signing keys already sealed in the store. No command
//! here creates a store: a missing store or key is exit code 2. Input is
//! checked before anything is written; an error is one line on stderr with
//! exit code 1 (2 for bad usage). Secrets never come from argv: a password is read from a
//! file or generated and printed once.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use cairn_auth::{MasterKey, roles};
use cairn_core::TenantId;
use cairn_identity::{Identity, IdentityError, IdentityOptions, PLATFORM_TENANT};
use clap::{Args, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

use crate::{
    auth::{self, IdentityArgs},
    store_url::{IfMissing, StoreArgs, Usage},
    up::{self, Stores},
};

/// The actor recorded on the events these commands write.
const ACTOR: &str = "cairn-cli";
/// The longest `cairn token` lifetime: a day.
const MAX_TOKEN_TTL: u32 = 86_400;

/// Where the identity data is, and the key that opens it.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdentityStoreArgs {
    /// The event store, as for `cairn up`: the read models are beside it
    /// (schema `S_read` for postgres://…?schema=S, `PATH.read` for
    /// sqlite://PATH, `read-models.db` under --data-dir).
    #[command(flatten)]
    store: StoreArgs,
    /// File holding the master key that seals the signing keys. Default:
    /// `CAIRN_MASTER_KEY` if set, else `<data-dir>/master.key`. Never
    /// created here: start `cairn up` once first.
    #[arg(long, env = "CAIRN_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// The public URL of the server that will receive the tokens: its
    /// `--public-url`, else `http://<its --listen address>`. Tokens name
    /// `<url>/realms/<tenant>` as their issuer, and a server with another
    /// public URL refuses them.
    #[arg(
        long,
        env = "CAIRN_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    public_url: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TenantsCommand {
    /// List the tenants: id and name, one per line (tab-separated).
    List {
        #[command(flatten)]
        store: IdentityStoreArgs,
        /// One JSON object per line: {"id","name"}.
        #[arg(long)]
        json: bool,
    },
    /// Create a tenant, its signing key and its `admin` user; prints the
    /// admin's generated password once, on a line containing `password:`.
    Create {
        #[command(flatten)]
        store: IdentityStoreArgs,
        /// Tenant id: a-z, 0-9, '-' and '_', starting with a letter or digit.
        id: String,
        /// Display name. Default: the id.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// List a tenant's users: username, roles (comma-separated) and id, one
    /// per line (tab-separated).
    List {
        #[command(flatten)]
        store: IdentityStoreArgs,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// One JSON object per line: {"id","username","roles"}.
        #[arg(long)]
        json: bool,
    },
    /// Create a user. Without --password-file a password is generated and
    /// printed once, on a line containing `password:`.
    Create {
        #[command(flatten)]
        store: IdentityStoreArgs,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a
        /// letter or digit.
        username: String,
        /// A role (repeatable): admin, operator, viewer, or super-admin in
        /// the platform tenant only. Default: viewer.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Read the password (8 to 1024 characters) from this file, `-` for
        /// stdin; one trailing newline is dropped.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

/// Options of `cairn token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    store: IdentityStoreArgs,
    /// Tenant id.
    #[arg(long)]
    tenant: String,
    /// The user the token is for; it carries the user's roles.
    #[arg(long)]
    user: String,
    /// Lifetime in seconds (at most a day).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_TOKEN_TTL))
    )]
    ttl: u32,
}

pub(crate) async fn tenants(cmd: TenantsCommand) -> anyhow::Result<()> {
    match cmd {
        TenantsCommand::List { store, json } => {
            let (identity, stores) = open(&store).await?;
            let tenants = identity.tenants().await.map_err(identity_error);
            stores.read_db.close().await;
            let mut out = std::io::stdout().lock();
            for (id, name) in tenants? {
                if json {
                    writeln!(out, "{}", json!({"id": id, "name": name}))?;
                } else {
                    writeln!(out, "{id}\t{name}")?;
                }
            }
            Ok(())
        }
        TenantsCommand::Create { store, id, name } => {
            let tenant = tenant_id(&id)?;
            let name = name.unwrap_or_else(|| tenant.to_string());
            let (identity, stores) = open(&store).await?;
            let created = create_tenant(&identity, &tenant, &name).await;
            stores.read_db.close().await;
            let password = created?;
            println!(
                "created tenant {tenant}: user admin password: {} (shown once)",
                &*password
            );
            Ok(())
        }
    }
}

/// The tenant, then its admin: the platform's is a super-admin, as on
/// first start.
async fn create_tenant(
    identity: &Identity,
    tenant: &TenantId,
    name: &str,
) -> anyhow::Result<Zeroizing<String>> {
    let password = cairn_auth::generate_password(20)?;
    let role = if tenant.as_str() == PLATFORM_TENANT {
        roles::SUPER_ADMIN
    } else {
        roles::ADMIN
    };
    identity
        .create_tenant(ACTOR, tenant, name)
        .await
        .map_err(identity_error)?;
    identity
        .create_user(ACTOR, tenant, "admin", &password, &[role.to_owned()])
        .await
        .map_err(identity_error)
        .with_context(|| {
            format!(
                "tenant {tenant} was created but its admin was not; \
                 create one with `cairn users create --tenant {tenant} admin --role {role}`"
            )
        })?;
    Ok(password)
}

pub(crate) async fn users(cmd: UsersCommand) -> anyhow::Result<()> {
    match cmd {
        UsersCommand::List {
            store,
            tenant,
            json,
        } => {
            let tenant = tenant_id(&tenant)?;
            let (identity, stores) = open(&store).await?;
            let users = identity.users(&tenant).await.map_err(identity_error);
            stores.read_db.close().await;
            let mut out = std::io::stdout().lock();
            for (id, username, roles) in users? {
                if json {
                    writeln!(
                        out,
                        "{}",
                        json!({"id": id, "username": username, "roles": roles})
                    )?;
                } else {
                    writeln!(out, "{username}\t{}\t{id}", roles.join(","))?;
                }
            }
            Ok(())
        }
        UsersCommand::Create {
            store,
            tenant,
            username,
            roles: named,
            password_file,
        } => {
            let tenant = tenant_id(&tenant)?;
            cairn_identity::domain::validate_username(&username)?;
            let roles = if named.is_empty() {
                vec![roles::VIEWER.to_owned()]
            } else {
                named
            };
            let (password, generated) = match &password_file {
                Some(path) => (read_password(path)?, false),
                None => (cairn_auth::generate_password(20)?, true),
            };
            let (identity, stores) = open(&store).await?;
            let created = identity
                .create_user(ACTOR, &tenant, &username, &password, &roles)
                .await
                .map_err(identity_error);
            stores.read_db.close().await;
            created?;
            let roles = roles.join(",");
            if generated {
                println!(
                    "created user {username} in tenant {tenant} (roles {roles}): password: {} (shown once)",
                    &*password
                );
            } else {
                println!("created user {username} in tenant {tenant} (roles {roles})");
            }
            Ok(())
        }
    }
}

pub(crate) async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let tenant = tenant_id(&args.tenant)?;
    cairn_identity::domain::validate_username(&args.user)?;
    let (identity, stores) = open(&args.store).await?;
    let token = identity
        .token_for(&tenant, &args.user, i64::from(args.ttl))
        .await
        .map_err(identity_error);
    stores.read_db.close().await;
    println!("{}", token?);
    Ok(())
}

/// Opens the stores and the identity service on them, after finding the
/// master key (never creating one).
async fn open(args: &IdentityStoreArgs) -> anyhow::Result<(Identity, Stores)> {
    if !args.public_url.starts_with("http://") && !args.public_url.starts_with("https://") {
        bail!(
            "invalid --public-url {}: must start with http:// or https://",
            args.public_url
        );
    }
    let master = master_key(args)?;
    let stores = up::open_stores(
        args.store.store.as_deref(),
        &args.store.data_dir,
        IfMissing::Fail,
    )
    .await?;
    let identity = Identity::open(
        stores.events.clone(),
        stores.read_db.clone(),
        master,
        IdentityOptions::new(&args.public_url),
    )
    .await
    .map_err(identity_error)
    .context("opening the identity service")?;
    Ok((identity, stores))
}

/// The master key, found as `cairn up` finds it, but only if it exists.
fn master_key(args: &IdentityStoreArgs) -> anyhow::Result<MasterKey> {
    let missing = |path: &Path| -> anyhow::Error {
        Usage(format!(
            "no master key at {}; start `cairn up` once or pass --master-key-file",
            path.display()
        ))
        .into()
    };
    match &args.master_key_file {
        Some(path) if !path.exists() => return Err(missing(path)),
        Some(_) => {}
        None if std::env::var("CAIRN_MASTER_KEY").is_ok() => {}
        None => {
            let path = args.store.data_dir.join("master.key");
            if !path.exists() {
                return Err(missing(&path));
            }
        }
    }
    let identity = IdentityArgs {
        master_key_file: args.master_key_file.clone(),
        ..IdentityArgs::default()
    };
    let (key, _) = auth::master_key(&identity, Some(&args.store.data_dir))?;
    Ok(key)
}

fn tenant_id(id: &str) -> anyhow::Result<TenantId> {
    TenantId::new(id).map_err(|e| anyhow!("{e} (got {id:?})"))
}

/// Reads a password from `path` (`-`: stdin), without its trailing newline.
fn read_password(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from stdin")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("reading --password-file {}", path.display()))?;
    }
    for end in ['\n', '\r'] {
        if text.ends_with(end) {
            text.pop();
        }
    }
    Ok(text)
}

/// Identity errors as one line; invalid input names each field.
fn identity_error(e: IdentityError) -> anyhow::Error {
    match e {
        IdentityError::Invalid(errors) => anyhow!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        other => anyhow!(other),
    }
}
