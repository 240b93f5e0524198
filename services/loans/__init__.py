"""The example domain: loan applications (the original Ozzy framework's own sample)."""
