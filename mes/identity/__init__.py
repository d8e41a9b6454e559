"""Identity and access: users, roles, machine keys, sessions, login lockout, permissions."""
