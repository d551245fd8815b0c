-- Version 1 -> 2: scoped access tokens (accounts::tokens::TokenScope) and deletion by title.
ALTER TABLE access_token ADD COLUMN scope_repository TEXT;
ALTER TABLE access_token ADD COLUMN scope_role TEXT CHECK (scope_role IN ('read', 'write', 'admin'));
CREATE INDEX access_token_title ON access_token(title);
