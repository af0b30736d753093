"""gunicorn entry point: ``gunicorn services.publisher.wsgi:app``."""

from services.publisher.app import create_app

app = create_app()
