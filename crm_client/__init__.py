"""Everything that knows the TelefUM CRM protocol: client, parsing, errors, reference CRM."""
