from flexunet.cli import main

main()
