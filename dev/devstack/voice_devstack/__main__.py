from voice_devstack.stack import main

main()
