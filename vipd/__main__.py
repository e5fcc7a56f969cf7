from vipd.cli import main

main()
