"""The simclr method: its settings (torch-free), its scenario and its parts. Nothing is imported here."""
