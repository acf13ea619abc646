fn main() {
    println!("squall-bench");
}
