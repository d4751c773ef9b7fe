from dsrl_cli.cli.app import main

main()
