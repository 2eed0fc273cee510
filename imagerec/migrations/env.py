from alembic import context

from imagerec.db import get_engine
from imagerec.models import Base

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    engine = get_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=True,  # SQLite can only ALTER through table copies
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
