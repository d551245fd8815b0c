//! Users, organisations, teams, robot accounts and repository permissions.
