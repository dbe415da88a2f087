from .admin.cli import main

main()
