"""Material lots: receipt, disposition, sublots, serials and the material ledger."""
