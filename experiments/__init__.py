"""Commands that train and compare models: `python -m experiments.<study>`."""
