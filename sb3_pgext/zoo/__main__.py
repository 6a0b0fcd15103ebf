from sb3_pgext.zoo.cli import main

if __name__ == "__main__":
    main()
